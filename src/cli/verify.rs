//! `comer-port verify`: prove an artifact's numerical parity with its source, that the full
//! backbone runs, that what was written re-reads bit for bit, and (with `--golden`) that it
//! reproduces a fixture folder. The checks live in `verify::artifact`; this file resolves the
//! inputs, prints the table or JSON, and maps the verdict to the exit code.

use std::path::{Path, PathBuf};

use comer_port::model::ComerConfig;
use comer_port::progress::Progress;
use comer_port::target::{self, Basis, TargetSpec};
use comer_port::text::{EscapedPath, json_safe};
use comer_port::verify::{Report, artifact};

/// Arguments of `comer-port verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Checks: (a) mapping parity with --source (source family's own ViT forward vs the \
artifact's plain-ViT branch, streamed block by block, on seeded images at the smallest grid where both \
compute the same function — a quarter of the pretrain grid, the table checked bit for bit, or a window's \
grid and a non-square size — plus each --size; exact mappings \
1e-5 relative, LayerNorm eps changes 1e-4; what cannot be modelled is reported as skipped), (b) the full \
backbone on a seeded image at img_size (finite, f1..f4 at strides 4/8/16/32 with embed_dim channels), \
(c) round trips (re-read, and a sibling .pth with the same stem, bit for bit) and the key set against \
upstream's layout (missing, unexpected, mis-shaped keys named), (d) --golden DIR: a forward/* fixture \
folder (1e-4 relative) or a sources/<family> folder (the vit_tokens goldens against the artifact's \
plain-ViT branch with the family's bound; what the plain layout cannot express is measured and reported \
as skipped), (e) --libtorch (a binary built with the `libtorch` feature; trusted files only): the \
--source file read through PyTorch itself against comer-port's reader, and the sibling .pth read back \
through PyTorch against the .safetensors, bit for bit.\n\n\
Examples:\n  comer-port verify comer.safetensors --source beitv2.pth\n  \
comer-port verify comer.safetensors --source deit_tiny.pth --json\n  \
comer-port verify comer.safetensors --source deit_small.pth --size 320x480 --size 512x512\n  \
comer-port verify comer.safetensors --source open_clip_vit_b16.bin --source-activation gelu\n  \
comer-port verify weights.safetensors --config case.json --golden fixtures/forward/det_tiny\n  \
comer-port verify comer.safetensors --source deit_tiny.pth --libtorch   (trusted files only)\n\n\
Exit codes: 0 every check that ran passed, 1 one failed, 2 usage, 3 bad input.")]
pub struct Args {
    /// The artifact (safetensors, target names).
    pub artifact: PathBuf,
    /// The source checkpoint the artifact was imported from: adds the mapping-parity check.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// A fixture folder to reproduce: forward/* (inputs.safetensors, expected.safetensors) or
    /// sources/<family> (source.json, golden.safetensors with vit_tokens*.<image>).
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// Config in the fixtures' case.json shape; default: the artifact's `comer_port.config` metadata.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A named preset (see `comer-port presets`).
    #[arg(long, value_parser = super::presets::parser())]
    pub preset: Option<String>,
    /// Seed of the generated images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Add a mapping-parity image of HxW pixels (whole target patches, at most 2048 a side);
    /// repeatable. Judged as the non-square second size is: where the target computes the
    /// source's function only on one grid (windows, relative-position tables) it is skipped
    /// with the reason.
    #[arg(long = "size", value_name = "HxW", value_parser = parse_size)]
    pub sizes: Vec<(usize, usize)>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The source's MLP activation, where the checkpoint does not record it (CLIP / open_clip
    /// state dicts): the source forward of the mapping-parity check uses it.
    #[arg(long, value_enum, value_name = "ACTIVATION", requires = "source")]
    pub source_activation: Option<super::import::ActivationArg>,
    /// No progress on stderr (errors still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Cross-check through libtorch: the --source file and the sibling .pth (trusted files only).
    #[arg(long, long_help = super::LIBTORCH_HELP)]
    pub libtorch: bool,
}

/// Run the checks on `artifact` under `cfg`: round trips, mapping parity against `source`
/// when given (its activation as `activation` says, when given), the backbone, and the
/// `golden` fixture folder when given. A model that does not load is a failed check naming
/// the key, not an error. Shared by `verify` and `demo`.
#[allow(clippy::too_many_arguments)]
pub fn report(
    artifact: &Path,
    source: Option<&Path>,
    activation: Option<super::import::ActivationArg>,
    golden: Option<&Path>,
    cfg: &ComerConfig,
    sizes: &[(usize, usize)],
    seed: u64,
    progress: &Progress,
) -> anyhow::Result<Report> {
    if let Some((h, w)) = sizes.iter().find(|(h, w)| h % cfg.patch_size != 0 || w % cfg.patch_size != 0) {
        return Err(super::UsageError(format!(
            "--size {h}x{w} is not a whole number of the target's {p}-pixel patches; use multiples of {p}",
            p = cfg.patch_size
        ))
        .into());
    }
    let source = match source {
        Some(src) => {
            let mut ck = comer_port::formats::open(src)?;
            if let Some(act) = activation {
                let quick = act == super::import::ActivationArg::QuickGelu;
                comer_port::families::detect::set_activation(&mut ck.metadata, quick, "--source-activation");
            }
            Some(ck)
        }
        None => None,
    };
    Ok(artifact::artifact_report(artifact, source.as_ref(), golden, cfg, sizes, seed, progress)?)
}

/// `HxW` in pixels, each side 1..=2048.
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not HxW with sides 1..=2048 (e.g. 320x480)");
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let p = |v: &str| v.trim().parse::<usize>().ok().filter(|v| (1..=2048).contains(v)).ok_or_else(bad);
    Ok((p(h)?, p(w)?))
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    #[cfg(not(feature = "libtorch"))]
    if a.libtorch {
        return Err(super::no_libtorch().into());
    }
    target::open_artifact(&a.artifact)?;
    let spec = TargetSpec::from_flags(a.config.as_deref(), a.preset.as_deref()).unwrap_or(TargetSpec::Recorded);
    let cfg = target::resolve(&spec, Basis::Artifact(&a.artifact))?;
    let progress = Progress::for_stderr(a.quiet);
    let report = report(
        &a.artifact,
        a.source.as_deref(),
        a.source_activation,
        a.golden.as_deref(),
        &cfg,
        &a.sizes,
        a.seed,
        &progress,
    )?;
    #[cfg(feature = "libtorch")]
    let report = if a.libtorch { with_libtorch_rows(report, &a)? } else { report };

    if a.json {
        println!("{}", json_safe(&serde_json::to_string_pretty(&report.to_json())?));
    } else {
        println!("verify {} ({}, {})", EscapedPath(&a.artifact), cfg.flavor.name(), cfg.img_size);
        print!("{}", report.render_table());
    }
    Ok(verdict_code(&report))
}

/// `--libtorch`'s rows after the others: the source and the sibling `.pth` read through
/// PyTorch itself (`verify::libtorch`).
#[cfg(feature = "libtorch")]
fn with_libtorch_rows(mut report: Report, a: &Args) -> anyhow::Result<Report> {
    let source = a.source.as_deref().map(comer_port::formats::open).transpose()?;
    for c in comer_port::verify::libtorch::checks(&a.artifact, source.as_ref())? {
        report.push(c);
    }
    Ok(report)
}

/// The exit code of a verify report: 0 when every check that ran passed, 1 when one failed
/// or none ran (the reason on stderr).
pub fn verdict_code(report: &Report) -> i32 {
    match report.ensure_passed() {
        Ok(()) if report.passed() => super::EXIT_OK,
        Ok(()) => {
            eprintln!("error: no check ran");
            super::EXIT_CHECK_FAILED
        }
        Err(e) => {
            eprintln!("error: {e}");
            super::EXIT_CHECK_FAILED
        }
    }
}
