//! `verify/golden.rs`: verify (d) against a `fixtures/sources/<family>` folder.
//!
//! Such a folder holds tiny checkpoints in one family's own layout, `source.json` (family,
//! patch size, image size, LayerNorm eps) and `golden.safetensors`, whose `vit_tokens*.<image>`
//! keys are what upstream's code computes for the plain-ViT branch of ViT-CoMer on the input
//! `<image>` of the same file: patch tokens without the class token, plus the position table
//! without its prefix rows (resized bicubically when the image grid differs), through every
//! block, no final norm (see the fixtures README, "golden keys"). Here the artifact's ViT
//! branch (`target_vit.rs`, every CTI injection off) runs on each golden image and is held to
//! the bound of the family's declared fit (`Family::fit`, judged in `policy.rs`): exact
//! families 1e-5 relative, a LayerNorm eps change 1e-4, a declared approximation its bound,
//! and what the plain layout cannot express (CLIP `ln_pre` and QuickGELU, Uni-Perceiver
//! `embeddings_norm`) measured and reported as skipped.
//!
//! A folder may hold several checkpoints and several golden variants (`vit_tokens_distilled`,
//! `vit_tokens_gelu`, …). The reference source is `--source`, else the file the artifact's
//! `comer_port.source` metadata names inside the folder. With one, the variant is the key its
//! own forward (`Family::source_vit`) reproduces best, and a golden that forward does not reproduce
//! within 1e-5 (computed from other weights: a float16 copy, another file of the folder) is
//! reported as skipped with both figures. Without one, the closest variant is used and said so.
//! The resize goldens are held against the artifact's own tensors where the artifact was
//! resized that way: DINOv2's patch kernel 14 -> 16 and position grid, BEiTv2 block 0's
//! relative-position table (bicubic or geometric, as `comer_port.transforms` records).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::compare::Check;
use super::error::VerifyError;
use super::parity::{Result, artifact_failure};
use super::policy::{EXACT_BOUND, fit_bound};
use super::target_vit::{TargetFlavour, target_vit};
use crate::families::detect::{self, Activation, QkvStyle, RelPos, SourceConfig};
use crate::families::{Family, Fit};
use crate::formats::{self, Checkpoint};
use crate::model::ComerConfig;
use crate::model::plain_vit::Weights;

/// Key prefix of the plain-ViT goldens.
const TOKENS: &str = "vit_tokens";

/// What `source.json` says about a sources folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFolder {
    /// `family` as the folder names it (`deit`, `beitv2`, `hf-vit`, …).
    pub family: String,
    /// `config.patch_size`.
    pub patch_size: usize,
    /// `config.img_size`.
    pub img_size: usize,
    /// `config.layernorm_eps` (or `layer_norm_eps`), 1e-6 when absent.
    pub layernorm_eps: f64,
    /// `config.hidden_act` when the folder names the activation.
    pub hidden_act: Option<String>,
}

impl SourceFolder {
    /// Read `dir/source.json`.
    pub fn read(dir: &Path) -> Result<SourceFolder> {
        let path = dir.join("source.json");
        let fixture = |reason: String| VerifyError::Fixture { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| fixture(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| fixture(format!("not JSON: {e}")))?;
        let family = v["family"].as_str().ok_or_else(|| fixture("no `family` string".into()))?;
        let dim = |name: &str| {
            v["config"][name]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| fixture(format!("no positive integer `config.{name}`")))
        };
        Ok(SourceFolder {
            family: family.to_string(),
            patch_size: dim("patch_size")?,
            img_size: dim("img_size")?,
            layernorm_eps: v["config"]["layernorm_eps"].as_f64().or(v["config"]["layer_norm_eps"].as_f64()).unwrap_or(1e-6),
            hidden_act: v["config"]["hidden_act"].as_str().map(str::to_string),
        })
    }

    /// The registered family this folder's name stands for (folders use a few older
    /// spellings: `beitv2`, `augreg`, `hf_vit`).
    pub fn family(&self) -> Option<&'static dyn Family> {
        let name = match self.family.as_str() {
            "augreg" => "augreg-npz",
            "hf_vit" => "hf-vit",
            "beitv2" => "beit",
            "siglip2" => "siglip",
            other => other,
        };
        crate::families::by_name(name).ok()
    }

    /// What `source.json` alone says of the source (no checkpoint at hand): its patch, eps and
    /// activation; the activation is recorded as assumed when the folder does not name it.
    pub fn nominal_config(&self) -> SourceConfig {
        let hf = self.family().is_some_and(|f| f.name() == "hf-vit");
        let activation = match self.hidden_act.as_deref() {
            Some("gelu_pytorch_tanh") | Some("gelu_new") => Some(Activation::GeluTanh),
            Some("quick_gelu") => Some(Activation::QuickGelu),
            Some("gelu") => Some(Activation::Gelu),
            _ => None,
        };
        SourceConfig {
            embed_dim: 0,
            depth: 0,
            num_heads: 0,
            patch_size: self.patch_size,
            pretrain_grid: Some((self.grid(), self.grid())),
            pos_resize: crate::model::plain_vit::PosResize::Bicubic,
            prefix_tokens: 0,
            num_registers: 0,
            mlp_hidden: 0,
            qkv: if self.family().is_some_and(|f| f.name() == "beit") { QkvStyle::FusedQvBias } else { QkvStyle::FusedBias },
            layer_scale: None,
            rel_pos: RelPos::None,
            activation: activation.unwrap_or(Activation::Gelu),
            // HF ViT keeps its eps in config.json; hub ViT files use 1e-12.
            layernorm_eps: if hf { 1e-12 } else { self.layernorm_eps },
            pre_norm: None,
            assumed: if activation.is_none() { vec!["activation".into()] } else { Vec::new() },
            prefix: String::new(),
            notes: Vec::new(),
        }
    }

    fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
}

/// True when `dir` is a `sources/*` folder (it has `source.json`), not a `forward/*` one.
pub fn is_source_folder(dir: &Path) -> bool {
    dir.join("source.json").is_file()
}

/// What the artifact side brings to a sources-folder comparison.
pub struct ArtifactSide<'a> {
    /// The artifact's tensors (target keys).
    pub weights: &'a Weights,
    /// The artifact's safetensors metadata (`comer_port.source`, `comer_port.transforms`).
    pub metadata: &'a BTreeMap<String, String>,
    pub cfg: &'a ComerConfig,
}

/// The reference source: `given`, else the artifact's `comer_port.source` inside `dir`.
fn reference_source(dir: &Path, given: Option<&Checkpoint>, meta: &BTreeMap<String, String>) -> Result<Option<Checkpoint>> {
    if given.is_some() {
        return Ok(None);
    }
    let Some(name) = meta.get("comer_port.source").filter(|n| !n.is_empty() && !n.contains("..")) else {
        return Ok(None);
    };
    let p = dir.join(name);
    if !p.exists() {
        return Ok(None);
    }
    Ok(Some(formats::open(&p)?))
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Max relative error of `got` against `exp` (`inf` when the shapes differ).
fn rel(got: &Tensor, exp: &Tensor) -> Result<f64> {
    if got.dims() != exp.dims() {
        return Ok(f64::INFINITY);
    }
    Ok(super::compare::compare(&flat(got)?, &flat(exp)?, EXACT_BOUND).max_rel)
}

/// (d) for a `sources/*` folder: the artifact's ViT branch against every `vit_tokens*.<image>`
/// golden (one check per image), plus the DINOv2 resize goldens. `source` is `--source`.
pub fn source_golden_checks(dir: &Path, art: &ArtifactSide, source: Option<&Checkpoint>) -> Result<Vec<Check>> {
    let folder = SourceFolder::read(dir)?;
    let label = format!("golden {}", folder.family);
    let golden_path = dir.join("golden.safetensors");
    if !golden_path.is_file() {
        return Ok(vec![Check::skipped(
            label,
            format!("{} has no golden.safetensors: nothing to compare against", dir.display()),
        )]);
    }
    let golden = candle_core::safetensors::load(&golden_path, &Device::Cpu).map_err(|e| VerifyError::Fixture {
        path: golden_path.clone(),
        reason: e.to_string(),
    })?;
    let owned = reference_source(dir, source, art.metadata)?;
    let source = source.or(owned.as_ref());

    let has_block_table = source.is_none_or(|ck| {
        ck.state_dict().1.iter().any(|(k, _)| k == "blocks.0.attn.relative_position_bias_table")
    });
    let mut checks = resize_goldens(&folder, &golden, art, has_block_table);
    // Group `vit_tokens*.<image>` keys by image.
    let mut by_image: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for key in golden.keys() {
        if let Some((variant, image)) = key.split_once('.')
            && variant.starts_with(TOKENS)
            && golden.contains_key(image)
        {
            by_image.entry(image).or_default().push(key.as_str());
        }
    }
    if by_image.is_empty() {
        checks.push(Check::skipped(
            format!("{label} {TOKENS}"),
            format!("{} holds no `{TOKENS}*.<image>` golden for the ViT branch", golden_path.display()),
        ));
        return Ok(checks);
    }

    // The reference source's own forward, and the fit decided per family.
    // A CLIP checkpoint that does not record its activation runs with both; the golden
    // variant it reproduces says which one it is.
    let mut src_vits = Vec::new();
    let fit = match source {
        Some(ck) => {
            let det = detect::detect_checkpoint(ck);
            match (det.family(), det.config.as_ref()) {
                (Some(f), Some(sc)) => {
                    let w = Weights::from_checkpoint(ck)?;
                    let variants = if sc.assumed.iter().any(|a| a == "activation") {
                        vec![Activation::Gelu, Activation::QuickGelu]
                    } else {
                        vec![sc.activation]
                    };
                    for activation in variants {
                        src_vits.push(f.source_vit(&w, &SourceConfig { activation, ..sc.clone() })?);
                    }
                    f.fit(sc)
                }
                _ => folder_fit(&folder),
            }
        }
        None => folder_fit(&folder),
    };
    if let Some(reason) = structural_skip(&folder, art.cfg) {
        checks.push(Check::skipped(format!("{label} {TOKENS}"), reason));
        return Ok(checks);
    }
    let tgt = match target_vit(TargetFlavour::of(art.cfg.flavor), art.weights, art.cfg.num_heads) {
        Ok(t) => t,
        Err(e) => {
            checks.push(artifact_failure(&format!("{label} {TOKENS}"), &e));
            return Ok(checks);
        }
    };
    let (bound, why) = fit_bound(&fit);
    let resized = resized_table(&folder, art.cfg);
    for (image, keys) in by_image {
        let img = golden[image].to_dtype(DType::F32)?;
        let got = match tgt.forward(&img) {
            Ok(t) => t,
            Err(e) => {
                checks.push(artifact_failure(&format!("{label} {TOKENS}*.{image}"), &e));
                continue;
            }
        };
        // The variant: the one the source reproduces best, else the one the artifact does.
        let mut src_outs = Vec::with_capacity(src_vits.len());
        for s in &src_vits {
            src_outs.push(s.forward(&img)?);
        }
        let mut scored = Vec::with_capacity(keys.len());
        for key in &keys {
            let mut r = f64::INFINITY;
            for s in &src_outs {
                r = r.min(rel(s, &golden[*key])?);
            }
            if src_outs.is_empty() {
                r = rel(&got, &golden[*key])?;
            }
            scored.push((r, *key));
        }
        let with_source = !src_outs.is_empty();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Every variant the source reproduces (a CLIP file without a recorded activation
        // reproduces both), else the closest one.
        let mut chosen: Vec<(f64, &str)> = scored.iter().copied().filter(|(r, _)| *r <= EXACT_BOUND).collect();
        if chosen.is_empty() {
            chosen.push(scored[0]);
        }
        let artifact_flat = flat(&got)?;
        for (src_rel, key) in chosen {
            let exp = &golden[key];
            let mut c = Check::new(format!("{label} {key}"), exp.dims(), &artifact_flat, &flat(exp)?, bound);
            if got.dims() != exp.dims() {
                c.passed = false;
                c.note = Some(format!("the artifact gives shape {:?}, the golden {:?}", got.dims(), exp.dims()));
                checks.push(c);
                continue;
            }
            c.note.clone_from(&why);
            if with_source && src_rel > EXACT_BOUND {
                let other = format!(
                    "the source's own forward parts from `{key}` by {src_rel:.3e} relative (> {EXACT_BOUND:e}): this \
                     golden was computed from other weights (another file of the folder, or a float16 copy of them), so \
                     it says nothing about the mapping; the artifact parts by {:.3e}",
                    c.figures.max_rel
                );
                checks.push(c.into_skipped(other));
                continue;
            }
            if let Some(reason) = &resized {
                checks.push(c.into_skipped(reason.clone()));
                continue;
            }
            if let Fit::Inexpressible(reason) = &fit {
                checks.push(c.into_skipped(reason.clone()));
                continue;
            }
            if !with_source && keys.len() > 1 {
                let others: Vec<&str> = scored.iter().map(|s| s.1).filter(|k| *k != key).collect();
                let note = format!("no source checkpoint: `{key}` is the closest of the variants (others: {others:?})");
                c.note = Some(match c.note {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
            }
            checks.push(c);
        }
    }
    Ok(checks)
}

/// The fit from the folder's `source.json` alone (no source checkpoint at hand).
fn folder_fit(folder: &SourceFolder) -> Fit {
    match folder.family() {
        Some(f) => f.fit(&folder.nominal_config()),
        None => Fit::Exact,
    }
}

/// Why the golden images cannot say anything about this artifact's ViT branch, if so.
fn structural_skip(folder: &SourceFolder, cfg: &ComerConfig) -> Option<String> {
    let beit = folder.nominal_config().qkv == QkvStyle::FusedQvBias;
    if beit != (TargetFlavour::of(cfg.flavor) == TargetFlavour::BeitComer) {
        return Some(format!(
            "{} golden against a {} artifact: the layouts differ (a lossy cross-layout import), no stated bound",
            folder.family,
            cfg.flavor.name()
        ));
    }
    let windowed: Vec<usize> = cfg.window_attn.iter().enumerate().filter(|(_, w)| **w).map(|(i, _)| i).collect();
    if !windowed.is_empty() {
        return Some(format!(
            "blocks {windowed:?} use windowed attention, the golden attends globally: a different function, no \
             stated bound"
        ));
    }
    if cfg.patch_size != folder.patch_size {
        return Some(format!(
            "patch kernel resized {} -> {} at import: the golden images run at patch {}, no stated bound",
            folder.patch_size, cfg.patch_size, folder.patch_size
        ));
    }
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    if beit && tg != folder.grid() {
        let g = folder.grid();
        return Some(format!(
            "relative-position tables resized {g}x{g} -> {tg}x{tg} windows at import: the golden's {g}x{g} images \
             do not fit the artifact's window"
        ));
    }
    None
}

/// A position table resized at import: the golden resizes the source's table once to each
/// image's grid, the artifact's ViT branch resizes the resized one again.
fn resized_table(folder: &SourceFolder, cfg: &ComerConfig) -> Option<String> {
    let (g, tg) = (folder.grid(), cfg.pretrain_size / cfg.patch_size.max(1));
    (g != tg).then(|| {
        format!(
            "position table resized {g}x{g} -> {tg}x{tg} at import: the golden resizes the source's {g}x{g} table \
             once to each image's grid, the artifact resizes the {tg}x{tg} one again; two bicubic resizes against \
             one have no stated bound"
        )
    })
}

/// The resize goldens against the artifact's own tensors. DINOv2's: `patch_embed.proj.weight.
/// {pi_resize_16, bilinear_16}` (the method the artifact's `comer_port.transforms` records)
/// and `pos_embed.resize_<g>to<tg>` (bicubic, no antialias) when the artifact's grid is `tg`.
///
/// `has_block_table`: the reference source has a per-block table (the relpos goldens were
/// computed from the fine-tuned file's block 0; a shared-table source is another file).
fn resize_goldens(
    folder: &SourceFolder,
    golden: &std::collections::HashMap<String, Tensor>,
    art: &ArtifactSide,
    has_block_table: bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    let transforms = crate::meta::ArtifactMeta::transforms_of(art.metadata);
    let p = art.cfg.patch_size;
    let kernel_key = match transforms.patch_resize.as_str() {
        "pinv" => Some(format!("patch_embed.proj.weight.pi_resize_{p}")),
        "bilinear" => Some(format!("patch_embed.proj.weight.bilinear_{p}")),
        _ => None,
    };
    let (g, tg) = (folder.grid(), art.cfg.pretrain_size / p.max(1));
    let pos_key = format!("pos_embed.resize_{g}to{tg}");
    // BEiT block 0's table resized at import to window w: `relpos_bicubic.block0.7to<2w-1>` or
    // `relpos_geometric.block0.4to<w>` (its cls rows last, which the artifact has none of).
    let table_key = "blocks.0.attn.relative_position_bias_table";
    let relpos_key = art.weights.opt(table_key).and_then(|t| {
        let rows = t.dims().first().copied()?;
        let side = (rows as f64).sqrt().round() as usize;
        let w = side.div_ceil(2);
        if side * side != rows || w == g || !has_block_table {
            return None;
        }
        match transforms.relpos_resize.as_str() {
            "bicubic" => Some(format!("relpos_bicubic.block0.{}to{side}", 2 * g - 1)),
            "geometric" => Some(format!("relpos_geometric.block0.{g}to{w}")),
            _ => None,
        }
    });
    let pairs = [
        (kernel_key.filter(|_| p != folder.patch_size), "patch_embed.proj.weight"),
        (Some(pos_key).filter(|_| g != tg), "pos_embed"),
        (relpos_key, table_key),
    ];
    for (golden_key, target_key) in pairs {
        let (Some(gk), Some(got)) = (golden_key, art.weights.opt(target_key)) else { continue };
        let Some(exp) = golden.get(&gk) else { continue };
        // Geometric goldens keep the source's 3 cls rows last; the artifact has none.
        let exp = &match (exp.dims(), got.dims()) {
            ([re, _], [rg, _]) if *re == *rg + 3 => exp.narrow(0, 0, *rg).unwrap_or_else(|_| exp.clone()),
            _ => exp.clone(),
        };
        let (Ok(a), Ok(b)) = (flat(&got), flat(exp)) else { continue };
        let mut c = Check::new(format!("golden {} {gk}", folder.family), exp.dims(), &a, &b, EXACT_BOUND);
        if got.dims() != exp.dims() {
            c.passed = false;
            c.note = Some(format!("`{target_key}` has shape {:?}, the golden {:?}", got.dims(), exp.dims()));
        } else {
            c.note = Some(format!("the artifact's `{target_key}` against the resize golden"));
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(family: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sources").join(family)
    }

    #[test]
    fn reads_source_json() {
        let f = SourceFolder::read(&folder("clip")).expect("source.json");
        assert_eq!(f.family, "clip");
        assert_eq!((f.patch_size, f.img_size, f.layernorm_eps), (16, 64, 1e-5));
        assert_eq!(f.family().map(|f| f.name()), Some("clip"));
        assert!(is_source_folder(&folder("deit")));
        assert!(!is_source_folder(&folder("../forward/det_tiny")));
    }

    #[test]
    fn missing_source_json_is_a_fixture_error() {
        let e = SourceFolder::read(&folder("../forward/det_tiny")).unwrap_err();
        assert!(matches!(e, VerifyError::Fixture { .. }));
    }

    #[test]
    fn folder_fits_are_decided_per_family() {
        let fit = |f: &str| folder_fit(&SourceFolder::read(&folder(f)).expect(f));
        assert_eq!(fit("deit"), Fit::Exact);
        assert_eq!(fit("beitv2"), Fit::Exact);
        assert_eq!(fit("augreg"), Fit::Exact);
        assert_eq!(fit("hf_vit"), Fit::EpsChange { from: 1e-12 });
        assert!(matches!(fit("clip"), Fit::Inexpressible(r) if r.contains("ln_pre")));
        assert!(matches!(fit("uniperceiver"), Fit::Inexpressible(r) if r.contains("embeddings_norm")));
    }
}
