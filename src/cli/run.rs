//! `comer-port run`: the reference forward on a safetensors batch or an image, writing the
//! pyramid (and optionally the fixtures' taps) to safetensors, and a false-colour PCA view.
//!
//! Mirrors how the fixtures were produced from upstream's `forward` (one call per input
//! tensor); images follow mmdet/mmseg's usual preprocessing (ImageNet mean/std).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use comer_port::export::outputs;
use comer_port::model::{Comer, ComerConfig, Store, resize};
use comer_port::progress::{Progress, Unit};
use comer_port::text::EscapedPath;
use comer_port::target::{self, Basis, TargetSpec};

/// ImageNet normalisation (RGB, on 0..1 values).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Arguments of `comer-port run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Images (--input x.png|x.jpg) are converted to RGB, resized bilinearly \
(align_corners=False, no antialias) so that each side is the nearest multiple of 32 (at least 32), \
scaled to 0..1 and normalised with ImageNet mean/std; the tensor is named 'image'.\n\n\
The config is the artifact's recorded one unless --config or --preset is given. An artifact whose \
recorded verification is not 'passed' (failed, not run, or none recorded) is used, with a warning on stderr.\n\n\
Examples:\n  comer-port run --weights comer.safetensors --input img.png --viz pyramid.png\n  \
comer-port run --weights comer.safetensors --input batch.safetensors -o pyramid.safetensors --taps\n  \
comer-port run --weights weights.safetensors --preset vit-comer-s-seg --input img.jpg -o out.safetensors\n\n\
Exit codes: 0 ok, 2 usage, 3 bad input, 4 output not written.")]
pub struct Args {
    /// Weights (safetensors, target state-dict names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Config in the fixtures' case.json shape; default: the weights' `comer_port.config` metadata.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A named preset (see `comer-port presets`).
    #[arg(long, value_parser = super::presets::parser())]
    pub preset: Option<String>,
    /// Inputs: a safetensors file of NCHW float tensors, or a .png/.jpg image.
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors: NAME.out.f1..f4 (+ NAME.out.x for beit-comer) per input tensor.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Also write the taps (NAME.spm.c1..c4, NAME.patch_embed, NAME.interactions.K.{x,c}).
    #[arg(long)]
    pub taps: bool,
    /// Render the four pyramid levels of the first image side by side as PCA false colour.
    #[arg(long)]
    pub viz: Option<PathBuf>,
    /// Overwrite existing outputs.
    #[arg(long)]
    pub force: bool,
    /// No progress on stderr (errors, warnings and the `wrote` lines still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Load an image as a normalised (1, 3, H', W') tensor, H' and W' the nearest multiples of 32.
pub fn load_image(path: &Path) -> anyhow::Result<Tensor> {
    let img = image::open(path).with_context(|| format!("{}", EscapedPath(path)))?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let round = |v: usize| ((v + 16) / 32).max(1) * 32;
    let (oh, ow) = (round(h), round(w));
    let src: Vec<f32> = img.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let r = resize::bilinear_nhwc(&src, 1, h, w, 3, oh, ow, None);
    let mut chw = vec![0f32; 3 * oh * ow];
    for (i, px) in r.chunks(3).enumerate() {
        for c in 0..3 {
            chw[c * oh * ow + i] = (px[c] - MEAN[c]) / STD[c];
        }
    }
    Ok(Tensor::from_vec(chw, (1, 3, oh, ow), &Device::Cpu)?)
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Serialize named f32 tensors to safetensors bytes.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut owned = Vec::new();
    for (name, t) in tensors {
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        owned.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("safetensors: {e}"))?;
    safetensors::serialize(views, None).map_err(|e| anyhow::anyhow!("safetensors: {e}"))
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.output.is_none() && args.viz.is_none() {
        return Err(super::UsageError("nothing to write: give -o OUT.safetensors and/or --viz OUT.png".into()).into());
    }
    // Each output its own file, none an input (--force included): a usage error first.
    let outputs = outputs::roles([("the -o output", args.output.as_deref()), ("the --viz output", args.viz.as_deref())]);
    let inputs = outputs::roles([
        ("the --weights file", Some(args.weights.as_path())),
        ("the --input file", Some(args.input.as_path())),
        ("the --config file", args.config.as_deref()),
    ]);
    outputs::check(&outputs, &inputs)?;
    for p in [&args.output, &args.viz].into_iter().flatten() {
        if p.exists() && !args.force {
            return Err(comer_port::export::atomic::WriteError::Exists(p.clone()).into());
        }
    }
    let ck = target::open_artifact(&args.weights)?;
    let spec = TargetSpec::from_flags(args.config.as_deref(), args.preset.as_deref()).unwrap_or(TargetSpec::Recorded);
    let cfg = target::resolve(&spec, Basis::Artifact(&args.weights))?;
    super::warn_unless_verified(&args.weights, &ck.metadata);
    drop(ck);
    let done = forward_to_files(
        &args.weights,
        &cfg,
        &args.input,
        args.output.as_deref(),
        args.taps,
        args.viz.as_deref(),
        args.force,
        &Progress::for_stderr(args.quiet),
    )?;
    if let Some(path) = &args.output {
        eprintln!("wrote {} tensors to {}", done.tensors, EscapedPath(path));
    }
    if let Some(path) = &args.viz {
        eprintln!("wrote {}", EscapedPath(path));
    }
    Ok(super::EXIT_OK)
}

/// What [`forward_to_files`] did.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// Tensors written to the output safetensors (0 without one).
    pub tensors: usize,
    /// Shapes of f1..f4 of the first input.
    pub pyramid: Vec<Vec<usize>>,
}

/// Load `weights` under `cfg`, run the forward on every tensor of `input` (a safetensors
/// batch or an image), write the outputs (and taps) to `output` and the PCA view of the
/// first input's pyramid to `viz`, each atomically; each step a stage of `progress`.
/// Shared by `run` and `demo`.
#[allow(clippy::too_many_arguments)]
pub fn forward_to_files(
    weights: &Path,
    cfg: &ComerConfig,
    input: &Path,
    output: Option<&Path>,
    taps: bool,
    viz: Option<&Path>,
    force: bool,
    progress: &Progress,
) -> anyhow::Result<Forwarded> {
    let reading = progress.stage(format!("read {}", weights.display()), 1, Unit::Steps);
    let store = Store::from_safetensors(weights)?;
    let model = Comer::new(&store.root(), cfg)?;
    store.finish()?;
    reading.finish(&format!("{} {}x{}", cfg.flavor.name(), cfg.img_size, cfg.img_size));
    let inputs: Vec<(String, Tensor)> = if is_image(input) {
        vec![("image".to_string(), load_image(input)?)]
    } else {
        let map: HashMap<String, Tensor> = candle_core::safetensors::load(input, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{}: {e}", EscapedPath(input)))?;
        let mut v: Vec<(String, Tensor)> = map.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?))).collect::<anyhow::Result<_>>()?
    };
    let mut out = Vec::new();
    let mut first: Option<[Tensor; 4]> = None;
    let forward = progress.stage("forward", inputs.len() as u64, Unit::Steps);
    for (name, img) in &inputs {
        forward.message(format!("{name} {:?}", img.dims()));
        let o = model.forward(img, name)?;
        forward.inc(1);
        for (i, f) in o.f.iter().enumerate() {
            out.push((format!("{name}.out.f{}", i + 1), f.clone()));
        }
        if let Some(x) = &o.x {
            out.push((format!("{name}.out.x"), x.clone()));
        }
        if taps {
            out.extend(o.taps.iter().map(|(t, v)| (format!("{name}.{t}"), v.clone())));
        }
        if first.is_none() {
            first = Some(o.f.clone());
        }
    }
    forward.finish(&format!("{} input tensors", inputs.len()));
    if let Some(path) = output {
        let writing = progress.stage(format!("write {}", path.display()), 1, Unit::Steps);
        comer_port::export::atomic::write_all(path, &safetensors_bytes(&out)?, force)?;
        writing.finish(&format!("{} tensors", out.len()));
    }
    if let (Some(path), Some(f)) = (viz, &first) {
        let writing = progress.stage(format!("write {}", path.display()), 1, Unit::Steps);
        let png = crate::cli::viz::pyramid_png(f)?;
        comer_port::export::atomic::write_all(path, &png, force)?;
        writing.finish("PCA view of f1..f4");
    }
    Ok(Forwarded {
        tensors: if output.is_some() { out.len() } else { 0 },
        pyramid: first.iter().flat_map(|f| f.iter().map(|t| t.dims().to_vec())).collect(),
    })
}
