//! `verify/artifact.rs`: the checks `comer-port verify` runs on an imported artifact.
//!
//! (a) mapping parity against the source checkpoint (`parity.rs`), with the family detected
//! and the bound chosen per family here ([`family_fit`]): exact mappings 1e-5 relative, a
//! LayerNorm eps change 1e-4; what the plain-ViT layout cannot express (CLIP `ln_pre` and
//! QuickGELU, Uni-Perceiver `embeddings_norm`, DINOv2 registers) is measured and reported as
//! skipped with the figures; what has no reference at all (windowed attention, resized patch
//! kernels or relative-position tables, cross-layout imports) is skipped with the reason.
//! A resized absolute position table is held to the family's bound at the target grid.
//! The artifact's key set is checked against upstream's layout in `keys.rs`.
//! (b) the full backbone (`model::Comer`) on a seeded image at `img_size`: finite outputs of
//! the documented shapes, f1..f4 at strides 4/8/16/32 with `embed_dim` channels.
//! (c) round trips: the artifact re-read by two readers, and a sibling `.pth`, bit for bit.
//! (d) a `forward/*` fixture folder: every expected `inputK.out.*` within 1e-4 relative
//! (a `sources/*` folder is `golden.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::compare::Check;
use super::error::VerifyError;
use super::parity::{EXACT_BOUND, artifact_failure, parity_of, seeded_images, seeded_values};
use super::source_vit::{SourceFamily, hf_checkpoint_eps, source_vit};
use super::target_vit::{TargetFlavour, target_vit};
use super::vit::{Result, Weights};
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

/// How far a family's source forward and the plain ViT-CoMer layout can agree, decided per
/// family (for mapping parity and for the `sources/*` goldens alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Renames, splits, concatenations and transposes only: [`EXACT_BOUND`].
    Exact,
    /// Exact tensors, but the source's LayerNorm eps (`from`) becomes upstream's 1e-6:
    /// [`EPS_CHANGE_BOUND`].
    EpsChange { from: f64 },
    /// Something the source computes has no place in the target layout: no stated bound,
    /// the figures are reported as skipped with this reason.
    Inexpressible(String),
}

impl Fit {
    /// The bound a check is held to, and the note that explains an approximate one.
    pub fn bound(&self) -> (f64, Option<String>) {
        match self {
            Fit::Exact | Fit::Inexpressible(_) => (EXACT_BOUND, None),
            Fit::EpsChange { from } => (
                EPS_CHANGE_BOUND,
                Some(format!(
                    "approximate: LayerNorm eps {from:e} -> {TARGET_EPS:e}, bound {EPS_CHANGE_BOUND:e}"
                )),
            ),
        }
    }
}

/// The fit of `family`, decided per family; `activation` and `registers` when a source
/// checkpoint says so, `eps` the source's LayerNorm eps.
pub fn family_fit(family: Family, activation: Option<detect::Activation>, registers: usize, eps: f64) -> Fit {
    match family {
        // CLIP: `ln_pre` (a LayerNorm between the position embedding and the first block) is
        // dropped under --lossy, and for OpenAI weights QuickGELU becomes upstream's exact
        // GELU; a LayerNorm cannot be folded into the patch kernel or the position table, so
        // no bound follows from the weights. Reported as skipped, with the measured figures.
        Family::Clip => Fit::Inexpressible(format!(
            "CLIP: `ln_pre` was dropped at import (a LayerNorm before the blocks has no place in \
             upstream's layout){}, LayerNorm eps 1e-5 -> 1e-6: no stated bound",
            match activation {
                Some(detect::Activation::QuickGelu) => ", QuickGELU became exact GELU",
                Some(detect::Activation::Gelu) => "",
                None => ", and the activation is not recorded (QuickGELU assumed; upstream uses exact GELU)",
            }
        )),
        // Uni-Perceiver: `embeddings_norm` is dropped under --lossy (same reason as CLIP's
        // `ln_pre`); the temporal position row folds exactly into `pos_embed`.
        Family::Uniperceiver => Fit::Inexpressible(
            "Uni-Perceiver: `embeddings_norm` was dropped at import (a LayerNorm before the blocks has \
             no place in upstream's layout), LayerNorm eps 1e-5 -> 1e-6: no stated bound"
                .into(),
        ),
        // DINOv2 with registers: upstream's ViT branch has no register tokens, and every patch
        // token attends to them in the source, so dropping them changes every block's output.
        Family::Dinov2 if registers > 0 => Fit::Inexpressible(format!(
            "DINOv2 with {registers} register tokens: they were dropped at import and every patch token \
             attends to them in the source: no stated bound"
        )),
        // Hugging Face ViT: exact tensors, LayerNorm eps from config.json (1e-12) -> 1e-6.
        _ if (eps - TARGET_EPS).abs() > 1e-12 => Fit::EpsChange { from: eps },
        // DeiT (all containers, distilled), timm ViT, MAE encoder, AugReg .npz, DINOv2, BEiT:
        // renames, q/k/v concatenation, kernel permutes, cls rows dropped: exact.
        _ => Fit::Exact,
    }
}

/// The verify-side forward of a detected family (`None` when verify has none).
pub fn source_family(det: &detect::Detection, ckpt: &Checkpoint) -> Option<SourceFamily> {
    let sc = det.config.as_ref()?;
    Some(match det.family {
        Family::Deit | Family::TimmVit | Family::Mae => SourceFamily::Timm,
        Family::Dinov2 => SourceFamily::Dinov2,
        Family::Beit => SourceFamily::Beit,
        Family::Clip => SourceFamily::Clip { activation: sc.activation },
        Family::HfVit => SourceFamily::HfVit { layer_norm_eps: hf_checkpoint_eps(ckpt) },
        Family::Uniperceiver => SourceFamily::UniPerceiver,
        Family::AugregNpz => SourceFamily::AugRegNpz,
        Family::Unknown => return None,
    })
}

/// The fit of a detected source checkpoint.
pub fn detected_fit(det: &detect::Detection, family: SourceFamily) -> Fit {
    let Some(sc) = det.config.as_ref() else { return Fit::Exact };
    let eps = match family {
        SourceFamily::HfVit { layer_norm_eps } => layer_norm_eps,
        _ => sc.layernorm_eps,
    };
    // CLIP checkpoints do not record the activation unless the container names it.
    let activation = (!sc.assumed.iter().any(|a| a == "activation")).then_some(sc.activation);
    family_fit(det.family, activation, sc.num_registers, eps)
}

/// Why the artifact's ViT branch is not the source's function at all (cross-layout import,
/// windowed attention, resized patch kernel), or `None` when parity can run.
fn structural_skip(family: Family, sc: &detect::SourceConfig, cfg: &ComerConfig) -> Option<String> {
    let flavour = target_flavour(cfg.flavor);
    if (family == Family::Beit) != (flavour == TargetFlavour::BeitComer) {
        return Some(format!(
            "{} source into {}: the layouts differ (BEiT blocks with relative position bias against timm \
             blocks with an absolute position table), a lossy import with no stated bound",
            family.name(),
            cfg.flavor.name()
        ));
    }
    let windowed: Vec<usize> = cfg.window_attn.iter().enumerate().filter(|(_, w)| **w).map(|(i, _)| i).collect();
    if !windowed.is_empty() {
        return Some(format!(
            "blocks {windowed:?} use windowed attention: the source attends globally, so the artifact's ViT \
             branch is a different function (no stated bound); verify with a global-attention config to \
             prove the mapping"
        ));
    }
    if sc.patch_size != cfg.patch_size {
        return Some(format!(
            "patch kernel resized {} -> {} at import: the two sides see different pixels per token, so the \
             kernel resize has no bound here (the resize itself is held to the dinov2 goldens)",
            sc.patch_size, cfg.patch_size
        ));
    }
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    if sc.rel_pos != detect::RelPos::None
        && let Some(g) = sc.pretrain_grid
        && g != (tg, tg)
    {
        return Some(format!(
            "relative-position tables resized {}x{} -> {tg}x{tg} windows at import: unilm BEiT fixes its \
             window, so the source has no forward at the target grid to bound against (the resize itself is \
             held to the relpos_bicubic / relpos_geometric goldens)",
            g.0, g.1
        ));
    }
    None
}

/// A two-sided comparison that ran (not skipped, not an artifact that failed to load).
fn is_comparison(c: &Check) -> bool {
    c.skipped.is_none() && c.bound > 0.0
}

/// (a) Mapping parity of `artifact` (target tensors) against its `source` checkpoint.
///
/// Images: the target's pretrain size and a non-square size (`seeded_images`). Where the
/// source's absolute position grid differs from the target's, the table was resized
/// bicubically at import; at the target's pretrain size the source model resizes its own
/// table to the same grid with the same bicubic filter at run time, so that image is held to
/// the family's bound; at the second size the artifact resizes an already-resized table (two
/// bicubic resizes against one) and the figures are reported as skipped. BEiT relative
/// position tables define one window, so only the pretrain size runs.
pub fn parity_checks(source: &Checkpoint, artifact: &Weights, cfg: &ComerConfig, seed: u64) -> Result<Vec<Check>> {
    const NAME: &str = "mapping parity";
    let det = detect::detect_checkpoint(source);
    let (Some(sc), Some(family)) = (det.config.as_ref(), source_family(&det, source)) else {
        return Ok(vec![Check::skipped(NAME, format!("source family not recognised: {}", det.reason))]);
    };
    if let Some(reason) = structural_skip(det.family, sc, cfg) {
        return Ok(vec![Check::skipped(format!("{NAME} ({})", det.family.name()), reason)]);
    }
    let fit = detected_fit(&det, family);
    let (bound, why) = fit.bound();
    let src_w = Weights::from_checkpoint(source)?;
    let mut inputs = seeded_images(seed, (cfg.pretrain_size, cfg.pretrain_size), cfg.patch_size)?;
    let second = inputs.pop();
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    let resized_pos = sc.rel_pos == detect::RelPos::None && sc.pretrain_grid.is_some_and(|g| g != (tg, tg));
    let mut second_skip = None;
    if let Some(s) = second {
        if sc.rel_pos != detect::RelPos::None {
            second_skip = Some((
                s.0,
                None,
                format!("relative-position tables define one {tg}x{tg} window; BEiT has no forward at another grid"),
            ));
        } else if resized_pos {
            let g = sc.pretrain_grid.unwrap_or_default();
            second_skip = Some((
                s.0.clone(),
                Some(s.1),
                format!(
                    "position table resized {}x{} -> {tg}x{tg} at import: at this size the artifact resizes it a \
                     second time, the source once from {}x{}; two bicubic resizes against one have no stated bound",
                    g.0, g.1, g.0, g.1
                ),
            ));
        } else {
            inputs.push(s);
        }
    }
    let flavour = target_flavour(cfg.flavor);
    let src = source_vit(family, &src_w, cfg.num_heads)?;
    let tgt = match target_vit(flavour, artifact, cfg.num_heads) {
        Ok(t) => t,
        Err(e) => return Ok(vec![artifact_failure(&format!("{NAME} ({})", det.family.name()), &e)]),
    };
    let mut checks = parity_of(&src, &tgt, &inputs, bound)?.checks;
    if let Some((input, image, reason)) = second_skip {
        match image {
            Some(img) => {
                let c = parity_of(&src, &tgt, &[(input, img)], EXACT_BOUND)?.checks;
                checks.extend(c.into_iter().map(|c| if is_comparison(&c) { c.into_skipped(reason.clone()) } else { c }));
            }
            None => checks.push(Check::skipped(format!("{NAME} {input}"), reason)),
        }
    }
    for c in &mut checks {
        c.name = format!("{} ({})", c.name, det.family.name());
        if !is_comparison(c) {
            continue;
        }
        if resized_pos && c.note.is_none() {
            let g = sc.pretrain_grid.unwrap_or_default();
            c.note = Some(format!(
                "position table resized {}x{} -> {tg}x{tg} at import; the source resizes its own at run time, same bicubic filter",
                g.0, g.1
            ));
        }
        if let Fit::Inexpressible(reason) = &fit {
            *c = c.clone().into_skipped(reason.clone());
        } else if c.note.is_none() {
            c.note.clone_from(&why);
        }
    }
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
    let fixture_err = |reason: String| VerifyError::Fixture { path: artifact.to_path_buf(), reason };
    let file = std::fs::File::open(artifact).map_err(|e| fixture_err(e.to_string()))?;
    // SAFETY: a read-only map of a file this process does not write; the hazard of another
    // process truncating it is the one every mmap-based reader (safetensors, candle) accepts.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| fixture_err(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| fixture_err(e.to_string()))?;
    // The reference side borrows the map: nothing is copied, memory stays bounded.
    let reference: BTreeMap<String, (Vec<usize>, &[u8])> =
        st.tensors().into_iter().map(|(name, view)| (name, (view.shape().to_vec(), view.data()))).collect();
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let reread = formats::open(artifact)?;
    // Drop the reference side's pages from the resident set once compared, as the re-read
    // side does (`TensorView::release`).
    let release = |data: &[u8]| {
        let start = data.as_ptr() as usize - map.as_ptr() as usize;
        // SAFETY: read-only shared file mapping never written through: MADV_DONTNEED only unmaps
        // pages, and later reads fault the same file bytes back in (see `Storage::release`).
        #[cfg(unix)]
        unsafe {
            let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, data.len());
        }
        #[cfg(not(unix))]
        let _ = start;
    };
    let mut checks = vec![bitwise(
        format!("round trip {}", file_name(artifact)),
        &reference,
        &reread.tensors(),
        &release,
    )];
    let pth = artifact.with_extension("pth");
    if pth.is_file() {
        let ck = formats::open(&pth)?;
        let (_, sd) = ck.state_dict();
        checks.push(bitwise(format!("round trip {} vs .safetensors", file_name(&pth)), &reference, &sd, &release));
    }
    Ok(checks)
}

/// Every reference tensor present in `got` with the same shape and bytes, and nothing more.
fn bitwise(
    name: String,
    reference: &BTreeMap<String, (Vec<usize>, &[u8])>,
    got: &[(String, &formats::TensorView)],
    release: &dyn Fn(&[u8]),
) -> Check {
    let got: BTreeMap<&str, &formats::TensorView> = got.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let n = reference.len();
    let same_bytes = |t: &formats::TensorView, data: &[u8]| {
        let same = match t.le_bytes_borrowed() {
            Some(b) => b == data,
            None => t.to_le_bytes() == data,
        };
        // Read once: stop counting these mapped pages in the resident set.
        t.release();
        release(data);
        same
    };
    for (i, (key, (shape, data))) in reference.iter().enumerate() {
        let why = match got.get(key.as_str()) {
            None => Some(format!("`{key}` is missing on re-read")),
            Some(t) if &t.shape != shape => Some(format!("`{key}` has shape {:?}, written {shape:?}", t.shape)),
            Some(t) if !same_bytes(t, data) => Some(format!("`{key}` differs bit for bit")),
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

/// Every check `comer-port verify` runs, in its order: (c) round trips first (a file that
/// does not re-read makes every other figure meaningless), the key set against upstream's
/// layout, (a) mapping parity against `source` judged under the approximations the artifact
/// declares (`verify::on_import::approximations`), (d) a `sources/*` golden folder on the ViT
/// branch, then (b) the backbone and a `forward/*` golden folder. A model that does not load
/// is a failed check naming the key. Shared by `verify`, `demo` and `import`.
pub fn artifact_report(
    artifact: &Path,
    source: Option<&Checkpoint>,
    golden: Option<&Path>,
    cfg: &ComerConfig,
    seed: u64,
) -> Result<super::Report> {
    use super::golden as golden_folder;
    use super::keys::{ArtifactKey, layout_check};
    use super::on_import::{apply_approximations, approximations, float_dtype};
    let mut report = super::Report::default();
    for c in round_trip_checks(artifact)? {
        report.push(c);
    }
    let ck = formats::open(artifact)?;
    let keys: Vec<ArtifactKey> = ck.tensors().into_iter().map(|(k, t)| (k, t.shape.clone(), t.dtype)).collect();
    report.push(layout_check(&keys, cfg));
    let target = Weights::from_checkpoint(&ck)?;
    if let Some(source) = source {
        let mut parity = super::Report::default();
        for c in parity_checks(source, &target, cfg, seed)? {
            parity.push(c);
        }
        let approx = approximations(ck.metadata.get("comer_port.transforms").map(String::as_str), float_dtype(&ck));
        apply_approximations(&mut parity, &approx);
        parity.checks.into_iter().for_each(|c| report.push(c));
    }
    if let Some(dir) = golden.filter(|d| golden_folder::is_source_folder(d)) {
        let side = golden_folder::ArtifactSide { weights: &target, metadata: &ck.metadata, cfg };
        for c in golden_folder::source_golden_checks(dir, &side, source)? {
            report.push(c);
        }
    }
    let store = crate::model::Store::from_safetensors(artifact)?;
    match Comer::new(&store.root(), cfg).and_then(|m| store.finish().map(|()| m)) {
        Ok(model) => {
            for c in backbone_checks(&model, cfg, seed)? {
                report.push(c);
            }
            if let Some(dir) = golden.filter(|d| !golden_folder::is_source_folder(d)) {
                for c in golden_checks(&model, dir)? {
                    report.push(c);
                }
            }
        }
        Err(e) => report.push(Check::outcome("backbone load", &[1], 1, Some(0), Some(e.to_string()))),
    }
    Ok(report)
}
