//! `comer-port export`: write an artifact in another format. One subcommand per target
//! (`onnx` now); each target's writer lives in `export/`.

use std::path::{Path, PathBuf};

use comer_port::export::onnx::{self, Deform, ExportOptions, Precision};
use comer_port::export::outputs;
use comer_port::text::EscapedPath;
use comer_port::model::ComerConfig;
use comer_port::progress::{Progress, Unit};
use comer_port::target::{self, Basis, TargetSpec};

/// Examples shared by `export --help` and `export onnx --help`.
const EXAMPLES: &str = "Examples:\n  comer-port export onnx comer.safetensors --input-size 512x512 -o comer.onnx\n  \
comer-port export onnx comer.safetensors --input-size 640x480 --batch 2 -o comer.onnx --force\n  \
comer-port export onnx comer.safetensors --input-size 512x512 --dtype f16 -o comer-f16.onnx\n  \
comer-port export onnx comer.safetensors --dynamic -o comer-any-size.onnx\n  \
comer-port export onnx comer.safetensors --input-size 512x512 --deform grid-sample -o comer-opset17.onnx\n  \
comer-port export onnx weights.safetensors --preset vit-comer-s-seg --input-size 512x512 -o comer.onnx\n\n\
The config is the artifact's recorded one unless --config or --preset is given. An artifact whose recorded \
verification is not 'passed' (failed, not run, or none recorded) is exported, with a warning on stderr.\n\n\
Exit codes: 0 ok, 2 usage, 3 bad input, 4 output not written.";

/// Arguments of `comer-port export`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(clap::Subcommand, Debug)]
pub enum Target {
    /// The whole backbone as a standard-op ONNX graph (opset 19; 17 with --deform
    /// grid-sample or gather) for ONNX Runtime.
    Onnx(OnnxArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("size").required(true).args(["input_size", "dynamic"])))]
pub struct OnnxArgs {
    /// The ViT-CoMer artifact (safetensors, as written by `comer-port import`).
    pub artifact: PathBuf,
    /// Output `.onnx` file (plus `<file>.data`, ONNX external data, when the weights pass 512 MiB).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Fixed input size HxW (multiples of 32), e.g. 512x512.
    #[arg(long = "input-size", value_parser = parse_size)]
    pub input_size: Option<(usize, usize)>,
    /// Fixed batch size (1..=256).
    #[arg(long, default_value_t = 1, value_parser = parse_batch, conflicts_with = "dynamic")]
    pub batch: usize,
    /// Any batch and any input size (height and width multiples of 32): the graph computes
    /// the position-table resize, reference points, window padding and level sizes from its
    /// input's shape; another size fails in the runtime at the node named
    /// `image_height_and_width_must_be_multiples_of_32`. Configs with a global-attention
    /// BEiT block (its relative-position table fixes the grid) are refused.
    #[arg(long)]
    pub dynamic: bool,
    /// Config JSON (case.json shape) when the artifact carries none.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Named upstream config (see `comer-port presets`) when the artifact carries none.
    #[arg(long, value_parser = super::presets::parser())]
    pub preset: Option<String>,
    /// Overwrite existing outputs.
    #[arg(long)]
    pub force: bool,
    /// How deformable attention samples its values. deform-conv: ONNX's DeformConv (opset
    /// 19), the fastest in ONNX Runtime, which gained that kernel in February 2026
    /// (microsoft/onnxruntime#27393; 1.32 tested): older runtimes answer NOT_IMPLEMENTED.
    /// grid-sample: upstream's own formulation (opset 17), for those. gather: opset 17,
    /// for runtimes without GridSample.
    #[arg(long, value_enum, default_value_t = Deform::DeformConv)]
    pub deform: Deform,
    /// Float type of the graph: f16 halves the weights and computes MatMul/Conv/GELU in
    /// float16, keeping LayerNorm, softmax, BatchNorm and the deformable sampling in float32;
    /// the input and outputs stay float32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// No progress on stderr (errors and warnings still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not HxW (e.g. 512x512)"))?;
    let p = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("'{s}' is not HxW (e.g. 512x512)"));
    let (h, w) = (p(h)?, p(w)?);
    onnx::check_input_size(h, w).map_err(|e| e.to_string())?;
    Ok((h, w))
}

fn parse_batch(s: &str) -> Result<usize, String> {
    let b = s.trim().parse::<usize>().map_err(|_| format!("'{s}' is not a batch size (e.g. 1)"))?;
    onnx::check_batch(b).map_err(|e| e.to_string())?;
    Ok(b)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.target {
        Target::Onnx(a) => run_onnx(a),
    }
}

fn run_onnx(a: OnnxArgs) -> anyhow::Result<i32> {
    let mut opts = match a.input_size {
        Some((h, w)) => {
            onnx::check_input_size(h, w)?;
            ExportOptions::new(h, w)
        }
        None => ExportOptions::dynamic(),
    };
    // The model file and its external data file, each its own file and neither an input
    // (--force included): a usage error first.
    let data = onnx::data_path(&a.output);
    let outs = outputs::roles([("the -o output", Some(a.output.as_path())), ("the external data file of -o", Some(data.as_path()))]);
    let inputs = outputs::roles([("the artifact", Some(a.artifact.as_path())), ("the --config file", a.config.as_deref())]);
    outputs::check(&outs, &inputs)?;
    if a.output.exists() && !a.force {
        return Err(comer_port::export::atomic::WriteError::Exists(a.output.clone()).into());
    }
    let progress = Progress::for_stderr(a.quiet);
    let reading = progress.stage(format!("read {}", a.artifact.display()), 1, Unit::Steps);
    let ck = target::open_artifact(&a.artifact)?;
    let spec = TargetSpec::from_flags(a.config.as_deref(), a.preset.as_deref()).unwrap_or(TargetSpec::Recorded);
    let cfg = target::resolve(&spec, Basis::Artifact(&a.artifact))?;
    reading.finish(&format!("{} tensors, {}", ck.tensors().len(), cfg.flavor.name()));
    super::warn_unless_verified(&a.artifact, &ck.metadata);
    opts.batch = a.batch;
    opts.deform = a.deform;
    opts.dtype = a.dtype;
    let writing = progress.stage(format!("export {}", a.output.display()), 1, Unit::Steps);
    let size = opts.size_name();
    let written = write_onnx(&ck, &a.artifact, &cfg, opts, &a.output, a.force)?;
    writing.finish(&format!("{} nodes, {} initializers", written.nodes, written.initializers));
    let shape = if a.dynamic { "any batch and input size".to_string() } else { format!("input {size}, batch {}", a.batch) };
    println!(
        "wrote {} ({} bytes, {} nodes, {} initializers, opset {}, {}, {} deformable sampling, {shape})",
        EscapedPath(&a.output),
        written.model_bytes,
        written.nodes,
        written.initializers,
        a.deform.opset(),
        a.dtype.name(),
        a.deform.name(),
    );
    if let Some((p, n)) = written.external {
        println!("wrote {} ({n} bytes of external data)", EscapedPath(&p));
    }
    Ok(crate::cli::EXIT_OK)
}

/// Export the artifact `ck` (read from `artifact`) under `cfg` to `output` as ONNX, the
/// artifact's file name recorded as its source. A refused or failed write stays at the top of
/// the error chain so the exit code says "output not written". Shared by `export` and `demo`.
pub fn write_onnx(
    ck: &comer_port::formats::Checkpoint,
    artifact: &Path,
    cfg: &ComerConfig,
    mut opts: ExportOptions,
    output: &Path,
    force: bool,
) -> anyhow::Result<onnx::Written> {
    opts.source = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (_, tensors) = ck.state_dict();
    match onnx::export(tensors, cfg, &opts, output, force) {
        Ok(w) => Ok(w),
        Err(onnx::OnnxError::Write(e)) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("exporting {} to ONNX", EscapedPath(artifact)))),
    }
}
