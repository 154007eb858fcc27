//! `verify/artifact.rs`: the checks `comer-port verify` runs on an imported artifact.
//!
//! (a) mapping parity against the source checkpoint (`parity.rs`), with the family detected
//! and the bound chosen here: exact mappings 1e-5 relative, a LayerNorm eps change 1e-4;
//! what the plain-ViT branch cannot model (windowed attention, resized patch kernels or
//! position tables, QuickGELU, cross-layout imports) is reported as skipped with the reason.
//! (b) the full backbone (`model::Comer`) on a seeded image at `img_size`: finite outputs of
//! the documented shapes, f1..f4 at strides 4/8/16/32 with `embed_dim` channels.
//! (c) round trips: the artifact re-read by two readers, and a sibling `.pth`, bit for bit.
//! (d) a `forward/*` fixture folder: every expected `inputK.out.*` within 1e-4 relative.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::compare::Check;
use super::error::VerifyError;
use super::parity::{EXACT_BOUND, SourceSide, TargetSide, mapping_parity, seeded_images, seeded_values};
use super::source_vit::{SourceFamily, hf_checkpoint_eps};
use super::target_vit::TargetFlavour;
use super::vit::{Activation, Result, Weights};
use crate::families::detect::{self, Family};
use crate::formats::{self, Checkpoint};
use crate::model::{Comer, ComerConfig, Flavor};

/// Bound of a documented approximate mapping: a LayerNorm eps change (HF 1e-12, CLIP and
/// Uni-Perceiver 1e-5 against upstream's 1e-6).
pub const EPS_CHANGE_BOUND: f64 = 1e-4;
/// Bound of the golden comparison: `1e-4 · max(1, max|expected|)`.
pub const GOLDEN_BOUND: f64 = 1e-4;
/// LayerNorm eps of upstream's ViT blocks.
const TARGET_EPS: f64 = 1e-6;

/// The target layout of the plain-ViT branch for a flavour.
pub fn target_flavour(f: Flavor) -> TargetFlavour {
    match f {
        Flavor::Det | Flavor::Seg => TargetFlavour::VitComer,
        Flavor::Beit => TargetFlavour::BeitComer,
    }
}

/// (a) Mapping parity of `artifact` (target tensors) against its `source` checkpoint.
pub fn parity_checks(source: &Checkpoint, artifact: &Weights, cfg: &ComerConfig, seed: u64) -> Result<Vec<Check>> {
    const NAME: &str = "mapping parity";
    let det = detect::detect_checkpoint(source);
    let Some(sc) = det.config.as_ref() else {
        return Ok(vec![Check::skipped(NAME, format!("source family not recognised: {}", det.reason))]);
    };
    let family = match det.family {
        Family::Deit | Family::TimmVit | Family::Mae => SourceFamily::Timm,
        Family::Dinov2 => SourceFamily::Dinov2,
        Family::Beit => SourceFamily::Beit,
        Family::Clip => match sc.activation {
            detect::Activation::Gelu => SourceFamily::Clip { activation: Activation::Gelu },
            detect::Activation::QuickGelu => {
                return Ok(vec![Check::skipped(
                    NAME,
                    "CLIP with QuickGELU: upstream's blocks use exact GELU, no stated bound",
                )]);
            }
        },
        Family::HfVit => SourceFamily::HfVit { layer_norm_eps: hf_checkpoint_eps(source) },
        Family::Uniperceiver => SourceFamily::UniPerceiver,
        Family::AugregNpz => SourceFamily::AugRegNpz,
        Family::Unknown => {
            return Ok(vec![Check::skipped(NAME, format!("source family not recognised: {}", det.reason))]);
        }
    };
    let flavour = target_flavour(cfg.flavor);
    let skip = |reason: String| Ok(vec![Check::skipped(NAME, reason)]);
    if (det.family == Family::Beit) != (flavour == TargetFlavour::BeitComer) {
        return skip(format!(
            "{} source into {}: the layouts differ (lossy import), no stated bound",
            det.family.name(),
            cfg.flavor.name()
        ));
    }
    if let Some(i) = cfg.window_attn.iter().position(|&w| w) {
        return skip(format!("block {i} uses windowed attention, which the plain-ViT branch does not model"));
    }
    if sc.patch_size != cfg.patch_size {
        return skip(format!(
            "patch kernel resized {} -> {} at import: no stated bound",
            sc.patch_size, cfg.patch_size
        ));
    }
    let target_grid = cfg.pretrain_size / cfg.patch_size.max(1);
    if let Some(g) = sc.pretrain_grid
        && g != (target_grid, target_grid)
    {
        return skip(format!(
            "position/relative-position table resized {}x{} -> {target_grid}x{target_grid} at import: no stated bound",
            g.0, g.1
        ));
    }
    let source_eps = match family {
        SourceFamily::HfVit { layer_norm_eps } => layer_norm_eps,
        _ => sc.layernorm_eps,
    };
    let (bound, why) = if (source_eps - TARGET_EPS).abs() > 1e-12 {
        (
            EPS_CHANGE_BOUND,
            Some(format!("approximate: LayerNorm eps {source_eps:e} -> {TARGET_EPS:e}, bound {EPS_CHANGE_BOUND:e}")),
        )
    } else {
        (EXACT_BOUND, None)
    };
    let src_w = Weights::from_checkpoint(source)?;
    let mut inputs = seeded_images(seed, (cfg.pretrain_size, cfg.pretrain_size), cfg.patch_size)?;
    // unilm's BEiT (and BEiTComer2's plain blocks) hold relative-position tables for one
    // fixed window, so neither side runs at a second grid: upstream raises there too.
    let mut fixed_grid = None;
    if family == SourceFamily::Beit && inputs.len() > 1 {
        let (name, _) = inputs.remove(1);
        fixed_grid = Some(Check::skipped(
            format!("{NAME} {name} ({})", det.family.name()),
            "BEiT relative-position tables are fixed to their window: the model runs at its pretrain grid only",
        ));
    }
    let report = mapping_parity(
        &SourceSide { family, weights: &src_w },
        &TargetSide { flavour, weights: artifact },
        cfg.num_heads,
        &inputs,
        bound,
    )?;
    let mut checks = report.checks;
    for c in &mut checks {
        c.name = format!("{} ({})", c.name, det.family.name());
        if c.note.is_none() {
            c.note.clone_from(&why);
        }
    }
    checks.extend(fixed_grid);
    Ok(checks)
}

/// (b) The full backbone on a seeded `(1, 3, img_size, img_size)` image: f1..f4 finite with
/// shape `(1, embed_dim, S/4, S/4)` … `(1, embed_dim, S/32, S/32)` (and beit-comer's `x`).
pub fn backbone_checks(model: &Comer, cfg: &ComerConfig, seed: u64) -> Result<Vec<Check>> {
    let s = cfg.img_size;
    let img = Tensor::from_vec(seeded_values(seed, 3 * s * s), (1, 3, s, s), &Device::Cpu)?;
    let out = model.forward(&img, "image")?;
    let mut checks = Vec::new();
    for (k, f) in out.f.iter().enumerate() {
        let stride = 4usize << k;
        let want = [1, cfg.embed_dim, s / stride, s / stride];
        checks.push(finite_check(
            &format!("backbone f{} {s}x{s} (stride {stride})", k + 1),
            f,
            Some(&want),
        )?);
    }
    if let Some(x) = &out.x {
        checks.push(finite_check(&format!("backbone x {s}x{s}"), x, None)?);
    }
    Ok(checks)
}

/// Finite everywhere and (when given) of the documented shape.
fn finite_check(name: &str, t: &Tensor, want: Option<&[usize]>) -> Result<Check> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bad = v.iter().position(|x| !x.is_finite());
    let dims = t.dims();
    if let Some(w) = want
        && dims != w
    {
        return Ok(Check::outcome(
            name,
            dims,
            v.len(),
            Some(0),
            Some(format!("shape {dims:?}, documented {w:?}")),
        ));
    }
    let note = match bad {
        Some(i) => format!("non-finite value {} at flat index {i}", v[i]),
        None => format!(
            "shape {dims:?}, all finite, max |value| {:.3e}",
            v.iter().fold(0f32, |m, x| m.max(x.abs()))
        ),
    };
    Ok(Check::outcome(name, dims, v.len(), bad, Some(note)))
}

/// (c) Round trips: the artifact read by `formats::open` against the safetensors crate, and a
/// sibling `.pth` with the same stem (when present) against the artifact, bit for bit.
pub fn round_trip_checks(artifact: &Path) -> Result<Vec<Check>> {
    let bytes = std::fs::read(artifact).map_err(|e| VerifyError::Fixture {
        path: artifact.to_path_buf(),
        reason: e.to_string(),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| VerifyError::Fixture {
        path: artifact.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut reference: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        reference.insert(name, (view.shape().to_vec(), view.data().to_vec()));
    }
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let reread = formats::open(artifact)?;
    let mut checks = vec![bitwise(
        format!("round trip {}", file_name(artifact)),
        &reference,
        &reread.tensors(),
    )];
    let pth = artifact.with_extension("pth");
    if pth.is_file() {
        let ck = formats::open(&pth)?;
        let (_, sd) = ck.state_dict();
        checks.push(bitwise(format!("round trip {} vs .safetensors", file_name(&pth)), &reference, &sd));
    }
    Ok(checks)
}

/// Every reference tensor present in `got` with the same shape and bytes, and nothing more.
fn bitwise(
    name: String,
    reference: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    got: &[(String, &formats::TensorView)],
) -> Check {
    let got: BTreeMap<&str, &formats::TensorView> = got.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let n = reference.len();
    for (i, (key, (shape, data))) in reference.iter().enumerate() {
        let why = match got.get(key.as_str()) {
            None => Some(format!("`{key}` is missing on re-read")),
            Some(t) if &t.shape != shape => Some(format!("`{key}` has shape {:?}, written {shape:?}", t.shape)),
            Some(t) if t.to_le_bytes() != *data => Some(format!("`{key}` differs bit for bit")),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Check::outcome(name, &[n], n, Some(i), Some(why));
        }
    }
    if let Some(extra) = got.keys().find(|k| !reference.contains_key(**k)) {
        return Check::outcome(name, &[n], n, Some(n.saturating_sub(1)), Some(format!("`{extra}` is not in the artifact")));
    }
    Check::outcome(name, &[n], n, None, Some(format!("{n} tensors bit for bit")))
}

/// (d) A `forward/*` fixture folder: the model on every tensor of `inputs.safetensors`,
/// every `NAME.out.*` of `expected.safetensors` within [`GOLDEN_BOUND`].
pub fn golden_checks(model: &Comer, dir: &Path) -> Result<Vec<Check>> {
    let load = |file: &str| {
        let p = dir.join(file);
        candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| VerifyError::Fixture {
            path: p.clone(),
            reason: format!("not a forward fixture folder ({e})"),
        })
    };
    let inputs = load("inputs.safetensors")?;
    let expected = load("expected.safetensors")?;
    let mut names: Vec<&String> = inputs.keys().collect();
    names.sort();
    let mut checks = Vec::new();
    for name in names {
        let img = inputs[name].to_dtype(DType::F32)?;
        let out = model.forward(&img, name)?;
        let mut got: Vec<(String, &Tensor)> =
            out.f.iter().enumerate().map(|(k, f)| (format!("{name}.out.f{}", k + 1), f)).collect();
        if let Some(x) = &out.x {
            got.push((format!("{name}.out.x"), x));
        }
        for (key, t) in got {
            let Some(exp) = expected.get(&key) else { continue };
            let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?) };
            let mut c = Check::new(format!("golden {key}"), exp.dims(), &flat(t)?, &flat(exp)?, GOLDEN_BOUND);
            if t.dims() != exp.dims() {
                c.passed = false;
                c.note = Some(format!("shape {:?}, expected {:?}", t.dims(), exp.dims()));
            }
            checks.push(c);
        }
    }
    if checks.is_empty() {
        return Err(VerifyError::Fixture {
            path: dir.to_path_buf(),
            reason: "no `NAME.out.*` of expected.safetensors matches an input".into(),
        });
    }
    Ok(checks)
}
