//! `comer-port import`: remap a checkpoint into an upstream ViT-CoMer layout with fresh
//! CTI/MRFP parameters, write safetensors / `.pth` / `X.config.json` and a provenance report.
//! The work is in `import` (plan → write → verify → commit); this file parses arguments and
//! prints the summary. Without `--preset`, `--config` or `--flavor` the library picks the
//! preset that fits the source (`target::pick_preset`).

use comer_port::families::mapping::PlanOptions;
use comer_port::import::{self, ImportOptions};
use comer_port::formats::DType;
use comer_port::model::Flavor;
use comer_port::target::TargetSpec;
use comer_port::text::{Escaped, EscapedPath};
use std::path::PathBuf;

/// A `--flavor` value: the flavours' own names (`Flavor::names`), nothing spelled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlavorArg(pub Flavor);

impl clap::ValueEnum for FlavorArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [FlavorArg; 3] = [FlavorArg(Flavor::ALL[0]), FlavorArg(Flavor::ALL[1]), FlavorArg(Flavor::ALL[2])];
        &ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelposArg {
    Bicubic,
    Geometric,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchArg {
    Bilinear,
    Pinv,
}

/// A `--source-activation` value: the MLP activation of the source model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationArg {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP, open_clip `-quickgelu` models.
    QuickGelu,
    /// `nn.GELU()` (erf): open_clip models without `-quickgelu`.
    Gelu,
}

impl ActivationArg {
    /// The activation the source forward uses.
    pub fn activation(self) -> comer_port::families::detect::Activation {
        match self {
            ActivationArg::QuickGelu => comer_port::families::detect::Activation::QuickGelu,
            ActivationArg::Gelu => comer_port::families::detect::Activation::Gelu,
        }
    }
}

/// The value parser of `--family NAME`: one of the registered families.
fn family_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(comer_port::families::names())
}

/// Arguments of `comer-port import`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Target: --preset NAME (see `comer-port presets`), --config C.json, or --flavor \
FLAVOR with the source's own dimensions. With none of them, the preset whose flavour fits the source's \
family (BEiT: beit-comer; DINOv2: the vit-comer-det DINOv2 presets; others: the vit-comer-seg ADE20K \
presets) and whose dimensions are the source's is chosen, and the choice is printed; none or several \
fitting is a usage error listing the candidates. --flavor beit-comer attends in windows like the \
beit-comer-l-codetr preset (the source's own window in every block; with --img-size N the last block of each \
interaction stretch in N/16 windows), so the artifact runs at any input size; a beit-comer target with a \
global block runs at one size only, and import says so.\n\n\
Output: the first lines sum the import up (source, family and why, target and why, verdict, every file \
written, times); the report (--report R.json) opens with the same summary. Progress goes to stderr: \
bars on a terminal, one line per stage otherwise, nothing with --quiet.\n\n\
Outputs: -o X.safetensors (default: <source stem>.comer.safetensors here), X.config.json beside it, \
--pth P.pth and --report R.json (+ R.txt) as given; every file written is listed.\n\n\
Examples:\n  comer-port import beitv2_large_patch16_224_pt1k_ft21kto1k.pth -o beit-comer.safetensors\n  \
comer-port import deit_small_patch16_224.pth --preset vit-comer-s-seg -o comer.safetensors --pth comer.pth\n  \
comer-port import vit-base-patch16-224/ --flavor vit-comer-det -o comer.safetensors --report report.json\n  \
comer-port import dinov2_vits14_reg4_pretrain.pth --lossy --no-verify -o comer.safetensors\n  \
comer-port import beitv2.pth --flavor beit-comer --img-size 896 -o comer.safetensors\n  \
comer-port import open_clip_vit_b16.bin --source-activation gelu --lossy -o comer.safetensors\n  \
comer-port import beitv2.pth -o comer.safetensors --pth comer.backbone.pth --key-prefix backbone.   (mmdet load_from)\n\n\
Exit codes: 0 ok, 1 the written artifact failed verification, 2 usage, 3 bad input, 4 output not written.")]
pub struct Args {
    /// Source checkpoint (file or Hugging Face folder).
    pub source: PathBuf,
    /// Output safetensors (default: `<source stem>.comer.safetensors` in the current folder).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Also write a torch.save-compatible `.pth` (`{"state_dict", "meta"}`).
    #[arg(long)]
    pub pth: Option<PathBuf>,
    /// Prefix every key of the `.pth` (e.g. `backbone.`, the detector's names for mmdet /
    /// Co-DETR `load_from`; see docs/mmdet.md). The safetensors artifact keeps upstream's
    /// backbone names. The `.pth` must not share the artifact's stem.
    #[arg(long, requires = "pth", value_name = "PREFIX")]
    pub key_prefix: Option<String>,
    /// Named upstream configuration (see `comer-port presets`).
    #[arg(long, conflicts_with = "config", value_parser = super::presets::parser())]
    pub preset: Option<String>,
    /// Target config JSON (`{"flavor", "constructor_kwargs"}`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Target flavour with dimensions inferred from the source.
    #[arg(long, value_enum, conflicts_with_all = ["preset", "config"])]
    pub flavor: Option<FlavorArg>,
    /// Input size the --flavor target is made for (vit-comer-*: img_size; beit-comer: the
    /// wide windows of the last block of each interaction stretch, PIXELS/16).
    #[arg(long, requires = "flavor", value_name = "PIXELS")]
    pub img_size: Option<usize>,
    /// The source's MLP activation, where the checkpoint does not record it (CLIP / open_clip
    /// state dicts); used by the source forward for parity and recorded in the report.
    #[arg(long, value_enum, value_name = "ACTIVATION")]
    pub source_activation: Option<ActivationArg>,
    /// No progress on stderr (errors and warnings still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Source family (default: detected from key patterns).
    #[arg(long, value_parser = family_parser())]
    pub family: Option<String>,
    /// Seed of the fresh parameters.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output float dtype.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Relative-position table resize.
    #[arg(long, value_enum, default_value_t = RelposArg::Bicubic)]
    pub relpos_resize: RelposArg,
    /// Patch-kernel resize (14 -> 16).
    #[arg(long, value_enum, default_value_t = PatchArg::Bilinear)]
    pub patch_resize: PatchArg,
    /// Drop what the target cannot express (recorded in the report) instead of refusing.
    #[arg(long)]
    pub lossy: bool,
    /// Refuse NaN/Inf in the weights (otherwise warned).
    #[arg(long)]
    pub strict_finite: bool,
    /// Omit derivable int64 buffers (relative_position_index, num_batches_tracked); load
    /// the result with strict=False.
    #[arg(long)]
    pub no_buffers: bool,
    /// Write the provenance report (JSON) here, and a human summary beside it (.txt).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Overwrite existing outputs.
    #[arg(long)]
    pub force: bool,
    /// Skip the verification of the written artifact (round trip, mapping parity against the
    /// source, full backbone — what `comer-port verify ARTIFACT --source SOURCE` runs); by
    /// default it runs before the artifact is renamed into place and its verdict is recorded
    /// in the `comer_port.verify` metadata.
    #[arg(long)]
    pub no_verify: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let source = a.source.clone();
    let target = match (TargetSpec::from_flags(a.config.as_deref(), a.preset.as_deref()), a.flavor) {
        (Some(spec), _) => spec,
        (None, Some(f)) => TargetSpec::Flavor(f.0, a.img_size),
        (None, None) => TargetSpec::Auto,
    };
    let output = a.output.clone().or_else(|| {
        let stem = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        Some(PathBuf::from(format!("{stem}.comer.safetensors")))
    });
    let opts = ImportOptions {
        family: a.family.clone(),
        target,
        seed: a.seed,
        dtype: match a.dtype {
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F32 => DType::F32,
        },
        plan: PlanOptions {
            lossy: a.lossy,
            relpos_geometric: a.relpos_resize == RelposArg::Geometric,
            patch_pinv: a.patch_resize == PatchArg::Pinv,
        },
        strict_finite: a.strict_finite,
        no_buffers: a.no_buffers,
        out: output,
        pth: a.pth.clone(),
        key_prefix: a.key_prefix.clone(),
        report: a.report.clone(),
        write_config: true,
        force: a.force,
        progress: comer_port::progress::Progress::for_stderr(a.quiet),
        verify: !a.no_verify,
        source_activation: a.source_activation.map(ActivationArg::activation),
    };
    // `verify X.safetensors` reads a same-stem `X.pth` back key for key: prefixed keys there
    // would read as a failed round trip.
    if let (Some(prefix), Some(out), Some(pth)) = (&opts.key_prefix, &opts.out, &opts.pth)
        && out.with_extension("pth") == *pth
    {
        return Err(super::UsageError(format!(
            "--key-prefix {}: name the .pth apart from the artifact (e.g. {}), since `comer-port verify {}` \
             reads a same-stem .pth back key for key",
            Escaped(prefix),
            EscapedPath(&out.with_extension("backbone.pth")),
            EscapedPath(out)
        ))
        .into());
    }
    let s = import::run(&source, None, &opts)?;
    // The summary first (its `wrote` lines list every file written), then the details.
    print!("{}", import::render_overview(&s.summary));
    let fresh = s.plan.targets.iter().filter(|p| matches!(p.origin, comer_port::families::mapping::Origin::Fresh { .. })).count();
    println!(
        "imported {} ({}) into {}: {} target keys ({} from the source, {} fresh, seed {})",
        Escaped(&s.source),
        s.family,
        s.flavor,
        s.plan.targets.len(),
        s.plan.targets.len() - fresh,
        fresh,
        s.seed
    );
    // The chosen preset's reason is the summary's target line already.
    for d in s.plan.decisions.iter().chain(&s.warnings).filter(|d| **d != s.summary.target_reason) {
        println!("  note: {}", Escaped(d));
    }
    if let Some(r) = &s.verify {
        println!("verify (recorded in the artifact's comer_port.verify metadata):");
        print!("{}", r.render_table());
        if let Err(e) = r.ensure_passed() {
            eprintln!("error: the written artifact failed verification: {e}");
            return Ok(crate::cli::EXIT_CHECK_FAILED);
        }
    }
    Ok(crate::cli::EXIT_OK)
}
