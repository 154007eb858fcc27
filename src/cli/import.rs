//! `comer-port import`: remap a checkpoint into an upstream ViT-CoMer layout with fresh
//! CTI/MRFP parameters, write safetensors / `.pth` / `config.json` and a provenance report.
//! The work is in `import` (plan → write → verify → commit); this file parses arguments and
//! prints the summary.

use comer_port::families::mapping::PlanOptions;
use comer_port::import::{self, ImportOptions};
use comer_port::formats::DType;
use comer_port::model::Flavor;
use comer_port::target::TargetSpec;
use std::path::PathBuf;

/// The bundled fixture used when no file is given.
pub(crate) const BUNDLED: &[u8] = include_bytes!("../../fixtures/sources/deit/deit_tiny.pth");
pub(crate) const BUNDLED_CONFIG: &str = include_str!("../../fixtures/forward/det_tiny/case.json");

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

/// Arguments of `comer-port import`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source checkpoint (file or Hugging Face folder). Without one, a bundled DeiT-tiny
    /// fixture is imported with the det_tiny config.
    pub source: Option<PathBuf>,
    /// Output safetensors (default: `<source stem>.comer.safetensors` in the current folder).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Also write a torch.save-compatible `.pth` (`{"state_dict", "meta"}`).
    #[arg(long)]
    pub pth: Option<PathBuf>,
    /// Named upstream configuration (see `comer-port presets`).
    #[arg(long, conflicts_with = "config", value_parser = super::presets::parser())]
    pub preset: Option<String>,
    /// Target config JSON (`{"flavor", "constructor_kwargs"}`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Target flavour with dimensions inferred from the source.
    #[arg(long, value_enum)]
    pub flavor: Option<FlavorArg>,
    /// Source family (default: guessed from key patterns).
    #[arg(long)]
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
    let bundled = a.source.is_none();
    let source = a.source.clone().unwrap_or_else(|| PathBuf::from("deit_tiny.pth"));
    let target = if let Some(spec) = TargetSpec::from_flags(a.config.as_deref(), a.preset.as_deref()) {
        spec
    } else if let Some(f) = a.flavor {
        TargetSpec::Flavor(f.0)
    } else if bundled {
        TargetSpec::Config(Box::new(comer_port::model::ComerConfig::from_case_json(BUNDLED_CONFIG)?))
    } else {
        anyhow::bail!("choose a target: --preset NAME, --config C.json or --flavor FLAVOR");
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
        out: output.clone(),
        pth: a.pth.clone(),
        report: a.report.clone(),
        write_config: true,
        force: a.force,
        progress: true,
        verify: !a.no_verify,
    };
    let s = import::run(&source, if bundled { Some(BUNDLED) } else { None }, &opts)?;
    let fresh = s.plan.targets.iter().filter(|p| matches!(p.origin, comer_port::families::mapping::Origin::Fresh { .. })).count();
    println!(
        "imported {} ({}) into {}: {} target keys ({} from the source, {} fresh, seed {})",
        s.source,
        s.family,
        s.flavor,
        s.plan.targets.len(),
        s.plan.targets.len() - fresh,
        fresh,
        s.seed
    );
    for d in s.plan.decisions.iter().chain(&s.warnings) {
        println!("  note: {d}");
    }
    if let Some(o) = &output {
        println!("wrote {}", o.display());
    }
    if let Some(p) = &a.pth {
        println!("wrote {}", p.display());
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
