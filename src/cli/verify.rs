//! `comer-port verify`: prove an artifact's numerical parity with its source, that the full
//! backbone runs, that what was written re-reads bit for bit, and (with `--golden`) that it
//! reproduces a fixture folder. The checks live in `verify::artifact`; this file resolves the
//! inputs, prints the table or JSON, and maps the verdict to the exit code.

use std::path::{Path, PathBuf};

use crate::model::{Comer, ComerConfig, Store};
use crate::verify::keys::{self, ArtifactKey};
use crate::verify::{Check, Report, Weights, artifact, golden as golden_folder};

/// Arguments of `comer-port verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Checks: (a) mapping parity with --source (source family's own ViT forward vs the \
artifact's plain-ViT branch, seeded images at the pretrain size and a non-square size; exact mappings \
1e-5 relative, LayerNorm eps changes 1e-4; what cannot be modelled is reported as skipped), (b) the full \
backbone on a seeded image at img_size (finite, f1..f4 at strides 4/8/16/32 with embed_dim channels), \
(c) round trips (re-read, and a sibling .pth with the same stem, bit for bit) and the key set against \
upstream's layout (missing, unexpected, mis-shaped keys named), (d) --golden DIR: a forward/* fixture \
folder (1e-4 relative) or a sources/<family> folder (the vit_tokens goldens against the artifact's \
plain-ViT branch with the family's bound; what the plain layout cannot express is measured and reported \
as skipped). Exit 0 when every check that ran passed, 1 when one failed.")]
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
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the generated images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run the checks on `artifact` under `cfg`: round trips, mapping parity against `source`
/// when given, the backbone, and the `golden` fixture folder when given. A model that does
/// not load is a failed check naming the key, not an error. Shared by `verify` and `demo`.
pub fn report(
    artifact: &Path,
    source: Option<&Path>,
    golden: Option<&Path>,
    cfg: &ComerConfig,
    seed: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::default();

    // (c) first: a file that does not re-read makes every other figure meaningless.
    for c in artifact::round_trip_checks(artifact)? {
        report.push(c);
    }

    // The key set against upstream's layout: a renamed or transposed tensor is named here.
    let ck = crate::formats::open(artifact)?;
    let keys: Vec<ArtifactKey> = ck.tensors().into_iter().map(|(k, t)| (k, t.shape.clone(), t.dtype)).collect();
    report.push(keys::layout_check(&keys, cfg));
    let target = Weights::from_checkpoint(&ck)?;

    // (a)
    let source = match source {
        Some(src) => Some(crate::formats::open(src)?),
        None => None,
    };
    if let Some(source) = &source {
        let mut parity = Report::default();
        for c in artifact::parity_checks(source, &target, cfg, seed)? {
            parity.push(c);
        }
        // What the artifact declares approximate (--lossy, f16/bf16) is judged as import judged it.
        let approx = crate::verify::on_import::approximations(
            ck.metadata.get("comer_port.transforms").map(String::as_str),
            crate::verify::on_import::float_dtype(&ck),
        );
        crate::verify::on_import::apply_approximations(&mut parity, &approx);
        parity.checks.into_iter().for_each(|c| report.push(c));
    }

    // (d) for a sources/* folder: the ViT branch alone, no full model needed.
    if let Some(dir) = golden.filter(|d| golden_folder::is_source_folder(d)) {
        let side = golden_folder::ArtifactSide { weights: &target, metadata: &ck.metadata, cfg };
        for c in golden_folder::source_golden_checks(dir, &side, source.as_ref())? {
            report.push(c);
        }
    }

    // (b) and (d): a model that does not load is a failed check naming the key.
    let store = Store::from_safetensors(artifact)?;
    let model = Comer::new(&store.root(), cfg).and_then(|m| store.finish().map(|()| m));
    match model {
        Ok(model) => {
            for c in artifact::backbone_checks(&model, cfg, seed)? {
                report.push(c);
            }
            if let Some(dir) = golden.filter(|d| !golden_folder::is_source_folder(d)) {
                for c in artifact::golden_checks(&model, dir)? {
                    report.push(c);
                }
            }
        }
        Err(e) => report.push(Check::outcome("backbone load", &[1], 1, Some(0), Some(e.to_string()))),
    }
    Ok(report)
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let cfg = super::run::resolve_config(&a.artifact, a.config.as_deref(), a.preset.as_deref())?;
    let report = report(&a.artifact, a.source.as_deref(), a.golden.as_deref(), &cfg, a.seed)?;

    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!("verify {} ({}, {})", a.artifact.display(), cfg.flavor.name(), cfg.img_size);
        print!("{}", report.render_table());
    }
    Ok(verdict_code(&report))
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
