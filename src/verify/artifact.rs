//! `verify/artifact.rs`: the checks `comer-port verify` runs on an imported artifact.
//!
//! (a) mapping parity against the source checkpoint (`parity.rs`), with the family detected
//! by the registry and the bound its declared [`Fit`] earns (`policy.rs`): exact mappings
//! 1e-5 relative, a LayerNorm eps change 1e-4, a declared approximation its own bound; what
//! the plain-ViT layout cannot express (CLIP `ln_pre` and QuickGELU, Uni-Perceiver
//! `embeddings_norm`, DINOv2 registers) is measured and reported as skipped with the
//! figures; what has no reference at all (windowed attention, resized patch kernels or
//! relative-position tables, cross-layout imports) is skipped with the reason.
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
use super::parity::{Result, artifact_failure, parity_of_pairs, resize_patches, seeded_images, seeded_values};
use super::policy::{EXACT_BOUND, GOLDEN_BOUND, apply_approximations, approximations, fit_bound};
use super::target_vit::{TargetFlavour, target_vit};
use crate::families::detect::{self, PosResize, QkvStyle, RelPos, SourceConfig};
use crate::families::{Family, Fit};
use crate::formats::{self, Checkpoint};
use crate::families::mapping::{self, Mapping, Plan, PlanOptions, Values};
use crate::meta::{ArtifactMeta, Transforms};
use crate::model::plain_vit::Weights;
use crate::model::{Comer, ComerConfig};
use crate::progress::{Progress, Stage, Unit};

/// Why the artifact's ViT branch is not the source's function at all (cross-layout import,
/// windowed attention, resized patch kernel), or `None` when parity can run.
fn structural_skip(family: &dyn Family, sc: &SourceConfig, cfg: &ComerConfig) -> Option<String> {
    let flavour = TargetFlavour::of(cfg.flavor);
    // BEiT blocks: q/v bias or relative position tables (what BEiT's detector reads).
    let beit_source = sc.qkv == QkvStyle::FusedQvBias || sc.rel_pos != RelPos::None;
    if beit_source != (flavour == TargetFlavour::BeitComer) {
        return Some(format!(
            "{} source into {}: the layouts differ (BEiT blocks with relative position bias against timm \
             blocks with an absolute position table), a lossy import with no stated bound",
            family.name(),
            cfg.flavor.name()
        ));
    }
    if sc.rel_pos == RelPos::None && parity_grid(cfg).is_none() {
        let windowed: Vec<usize> = cfg.window_attn.iter().enumerate().filter(|(_, w)| **w).map(|(i, _)| i).collect();
        return Some(format!(
            "blocks {windowed:?} use windowed attention of different sizes: the source attends globally, and no \
             grid makes every window the whole grid (no stated bound); verify with a global-attention config \
             to prove the mapping"
        ));
    } else if sc.rel_pos != RelPos::None
        && cfg.window_attn.iter().any(|w| *w)
        && (parity_grid(cfg) != sc.pretrain_grid.map(|g| g.0) || cfg.window_attn.iter().any(|w| !*w))
    {
        let windowed: Vec<usize> = cfg.window_attn.iter().enumerate().filter(|(_, w)| **w).map(|(i, _)| i).collect();
        return Some(format!(
            "blocks {windowed:?} use windowed attention: the source attends globally, so the artifact's ViT \
             branch is a different function (no stated bound); verify with a global-attention config to \
             prove the mapping"
        ));
    }
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    if sc.rel_pos != RelPos::None
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

/// The token grid mapping parity runs at: the target's pretrain grid when every block attends
/// globally; when blocks attend in windows of one size `w` (the DINOv2 detection presets:
/// 14), the `w x w` grid, where each window is the whole grid without padding, so windowed
/// attention is exactly the source's global attention. `None` when the windows differ.
fn parity_grid(cfg: &ComerConfig) -> Option<usize> {
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    let sizes: std::collections::BTreeSet<usize> = cfg
        .window_attn
        .iter()
        .zip(&cfg.window_size)
        .filter(|(on, _)| **on)
        .map(|(_, w)| w.unwrap_or(tg))
        .collect();
    match sizes.len() {
        0 => Some(tg),
        1 => sizes.first().copied().filter(|w| *w > 0),
        _ => None,
    }
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
pub fn parity_checks(
    source: &Checkpoint,
    artifact: &Weights,
    cfg: &ComerConfig,
    transforms: &Transforms,
    seed: u64,
) -> Result<Vec<Check>> {
    const NAME: &str = "mapping parity";
    let det = detect::detect_checkpoint(source);
    let (Some(sc), Some(family)) = (det.config.as_ref(), det.family()) else {
        return Ok(vec![Check::skipped(NAME, format!("source family not recognised: {}", det.reason))]);
    };
    if let Some(reason) = structural_skip(family, sc, cfg) {
        return Ok(vec![Check::skipped(format!("{NAME} ({})", det.family), reason)]);
    }
    let fit = family.fit(sc);
    let (bound, why) = fit_bound(&fit);
    let src_w = Weights::from_checkpoint(source)?;
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    // Windowed blocks: parity runs at the grid of one window (exactly global attention).
    let windowed = cfg.window_attn.iter().any(|w| *w);
    let pg = parity_grid(cfg).unwrap_or(tg);
    // The source sees tg x tg patches of its own size. A target with another patch size sees
    // every patch resized (FlexiViT's identity: with the pseudo-inverse kernel the tokens are
    // the same; with upstream's bilinear kernel they are not, and the figures say by how much).
    let (ps, pt) = (sc.patch_size.max(1), cfg.patch_size.max(1));
    let mut inputs = Vec::new();
    for (name, img) in seeded_images(seed, (pg * ps, pg * ps), ps)? {
        if ps == pt {
            inputs.push((name, img.clone(), img));
        } else {
            let t = resize_patches(&img, ps, pt)?;
            let (h, w) = (t.dims()[2], t.dims()[3]);
            inputs.push((format!("{name} -> {h}x{w}"), img, t));
        }
    }
    let second = inputs.pop();
    let resized_pos = sc.rel_pos == RelPos::None && sc.pretrain_grid.is_some_and(|g| g != (tg, tg));
    let mut second_skip = None;
    if let Some(s) = second {
        if windowed {
            second_skip = Some((
                s.0,
                None,
                format!("windowed attention equals global attention only on a {pg}x{pg} grid (one whole window)"),
            ));
        } else if sc.rel_pos != RelPos::None {
            second_skip = Some((
                s.0,
                None,
                format!("relative-position tables define one {tg}x{tg} window; BEiT has no forward at another grid"),
            ));
        } else if resized_pos {
            let g = sc.pretrain_grid.unwrap_or_default();
            second_skip = Some((
                s.0.clone(),
                Some((s.1, s.2)),
                format!(
                    "position table resized {}x{} -> {tg}x{tg} at import: at this size the artifact resizes it a \
                     second time, the source once from {}x{}; two bicubic resizes against one have no stated bound",
                    g.0, g.1, g.0, g.1
                ),
            ));
        } else if sc.pos_resize != PosResize::Bicubic {
            second_skip = Some((
                s.0.clone(),
                Some((s.1, s.2)),
                format!(
                    "the source resizes its position table {:?} at run time, upstream's ViT-CoMer bicubic: at a \
                     grid other than {tg}x{tg} the two functions differ, with no stated bound",
                    sc.pos_resize
                ),
            ));
        } else {
            inputs.push(s);
        }
    }
    let src = family.source_vit(&src_w, sc)?;
    let tgt = match target_vit(TargetFlavour::of(cfg.flavor), artifact, cfg.num_heads) {
        Ok(t) => t,
        Err(e) => return Ok(vec![artifact_failure(&format!("{NAME} ({})", det.family), &e)]),
    };
    let mut checks = parity_of_pairs(&src, &tgt, &inputs, bound)?.checks;
    if let Some((input, images, reason)) = second_skip {
        match images {
            Some((a, b)) => {
                let c = parity_of_pairs(&src, &tgt, &[(input, a, b)], EXACT_BOUND)?.checks;
                checks.extend(c.into_iter().map(|c| if is_comparison(&c) { c.into_skipped(reason.clone()) } else { c }));
            }
            None => checks.push(Check::skipped(format!("{NAME} {input}"), reason)),
        }
    }
    for c in &mut checks {
        c.name = format!("{} ({})", c.name, det.family);
        if !is_comparison(c) {
            continue;
        }
        if windowed && c.note.is_none() {
            c.note = Some(format!(
                "blocks with windowed attention run on a {pg}x{pg} grid, one window without padding: exactly global \
                 attention; the position table is resized {tg}x{tg} -> {pg}x{pg} on both sides, same bicubic filter"
            ));
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
        } else if ps != pt && transforms.patch_resize != "pinv" {
            *c = c.clone().into_skipped(format!(
                "patch kernel resized {ps} -> {pt} with {} interpolation at import (upstream's convert_14to16): the \
                 source on {ps}-pixel patches against the artifact on the same patches resized to {pt} pixels is no \
                 identity for that kernel, so no bound can be stated; `--patch-resize pinv` (FlexiViT's \
                 pseudo-inverse) makes it exact",
                if transforms.patch_resize.is_empty() { "an unrecorded" } else { transforms.patch_resize.as_str() }
            ));
        } else if ps != pt {
            c.note = Some(format!(
                "patch kernel resized {ps} -> {pt} by pseudo-inverse at import: FlexiViT's identity, every {ps}-pixel \
                 patch resized to {pt} pixels gives the same token{}",
                [c.note.as_deref(), why.as_deref()].into_iter().flatten().map(|n| format!("; {n}")).collect::<String>()
            ));
        } else if c.note.is_none() {
            c.note.clone_from(&why);
        }
    }
    Ok(checks)
}

/// (b) The full backbone on a seeded `(1, 3, img_size, img_size)` image: f1..f4 finite with
/// shape `(1, embed_dim, S/4, S/4)` … `(1, embed_dim, S/32, S/32)` (and beit-comer's `x`).
pub fn backbone_checks(model: &Comer, cfg: &ComerConfig, seed: u64) -> Result<Vec<Check>> {
    let s = super::policy::backbone_size(cfg.img_size);
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
    if s != cfg.img_size {
        for c in &mut checks {
            let note = c.note.take().unwrap_or_default();
            c.note = Some(format!("img_size {} is not a multiple of 32, checked at {s}x{s}; {note}", cfg.img_size));
        }
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
    let map = formats::map_file(artifact).map_err(|e| fixture_err(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| fixture_err(e.to_string()))?;
    // The reference side borrows the map: nothing is copied, memory stays bounded.
    let reference: BTreeMap<String, (Vec<usize>, &[u8])> =
        st.tensors().into_iter().map(|(name, view)| (name, (view.shape().to_vec(), view.data()))).collect();
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let reread = formats::open(artifact)?;
    // Drop the reference side's pages from the resident set once compared, as the re-read
    // side does (`TensorView::release`).
    let release = |data: &[u8]| map.release(data);
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
/// declares (`policy::approximations`), (d) a `sources/*` golden folder on the ViT
/// branch, then (b) the backbone and a `forward/*` golden folder. A model that does not load
/// is a failed check naming the key. Each group of checks is a stage of `progress`
/// (`verify: round trip`, `verify: key set`, …). Shared by `verify`, `demo` and `import`.
pub fn artifact_report(
    artifact: &Path,
    source: Option<&Checkpoint>,
    golden: Option<&Path>,
    cfg: &ComerConfig,
    seed: u64,
    progress: &Progress,
) -> Result<super::Report> {
    use super::golden as golden_folder;
    use super::keys::{ArtifactKey, layout_check};
    let mut report = super::Report::default();
    let g = Group::begin(progress, "round trip", &report);
    for c in round_trip_checks(artifact)? {
        report.push(c);
    }
    g.end(&report);
    let g = Group::begin(progress, "key set", &report);
    let ck = formats::open(artifact)?;
    let keys: Vec<ArtifactKey> = ck.tensors().into_iter().map(|(k, t)| (k, t.shape.clone(), t.dtype)).collect();
    report.push(layout_check(&keys, cfg));
    g.end(&report);
    let target = Weights::from_checkpoint(&ck)?;
    if let Some(source) = source {
        let g = Group::begin(progress, "mapping parity", &report);
        let mut parity = super::Report::default();
        let transforms = ArtifactMeta::transforms_of(&ck.metadata);
        for c in parity_checks(source, &target, cfg, &transforms, seed)? {
            parity.push(c);
        }
        // What --lossy dropped is re-derived from the source and the mapping, not read
        // from the artifact's metadata (which could claim it falsely to loosen the check).
        let replanned = replan(source, cfg);
        let dropped: Vec<String> = match &replanned {
            Ok(plan) => plan.sources.iter().filter(|f| f.fate == "dropped-lossy").map(|f| f.key.clone()).collect(),
            Err(_) => Vec::new(),
        };
        let approx = approximations(&dropped, float_dtype(&ck));
        apply_approximations(&mut parity, &approx);
        parity.checks.into_iter().for_each(|c| report.push(c));
        g.end(&report);
        let g = Group::begin(progress, "source and fresh parameters", &report);
        if let Some(c) = source_hash_check(source, &ck.metadata) {
            report.push(c);
        }
        match &replanned {
            Ok(plan) => report.push(fresh_check(plan, &ck)),
            Err(e) => report.push(Check::skipped("fresh parameters", format!("the source could not be mapped again: {e}"))),
        }
        g.end(&report);
    }
    if let Some(dir) = golden.filter(|d| golden_folder::is_source_folder(d)) {
        let g = Group::begin(progress, "source goldens", &report);
        let side = golden_folder::ArtifactSide { weights: &target, metadata: &ck.metadata, cfg };
        for c in golden_folder::source_golden_checks(dir, &side, source)? {
            report.push(c);
        }
        g.end(&report);
    }
    let g = Group::begin(progress, "backbone", &report);
    let store = crate::model::Store::from_safetensors(artifact)?;
    match Comer::new(&store.root(), cfg).and_then(|m| store.finish().map(|()| m)) {
        Ok(model) => {
            for c in backbone_checks(&model, cfg, seed)? {
                report.push(c);
            }
            g.end(&report);
            if let Some(dir) = golden.filter(|d| !golden_folder::is_source_folder(d)) {
                let g = Group::begin(progress, "forward goldens", &report);
                for c in golden_checks(&model, dir)? {
                    report.push(c);
                }
                g.end(&report);
            }
        }
        Err(e) => {
            report.push(Check::outcome("backbone load", &[1], 1, Some(0), Some(e.to_string())));
            g.end(&report);
        }
    }
    Ok(report)
}

/// A group of checks shown as one progress stage (`verify: NAME`), from the report's
/// length when it began.
struct Group {
    stage: Stage,
    from: usize,
}

impl Group {
    fn begin(progress: &Progress, name: &str, report: &super::Report) -> Group {
        Group { stage: progress.stage(format!("verify: {name}"), 1, Unit::Steps), from: report.checks.len() }
    }

    /// The group's checks are in `report`: the stage says how they came out.
    fn end(self, report: &super::Report) {
        let checks = &report.checks[self.from.min(report.checks.len())..];
        let count = |f: &dyn Fn(&Check) -> bool| checks.iter().filter(|c| f(c)).count();
        let (ok, skipped) = (count(&|c| c.skipped.is_none() && c.passed), count(&|c| c.skipped.is_some()));
        let failed = checks.len() - ok - skipped;
        let mut detail = format!("{ok} ok");
        if skipped > 0 {
            detail.push_str(&format!(", {skipped} skipped"));
        }
        if failed > 0 {
            detail.push_str(&format!(", {failed} FAILED"));
        }
        self.stage.finish(&detail);
    }
}

/// The float dtype of an artifact when every floating-point tensor has it; F32 (no relaxed
/// bound) when they are mixed, so one narrow tensor cannot loosen the check of the others.
pub fn float_dtype(ck: &Checkpoint) -> crate::formats::DType {
    use crate::formats::DType as D;
    let floats: std::collections::BTreeSet<&'static str> = ck
        .tensors()
        .iter()
        .map(|(_, t)| t.dtype)
        .filter(|d| matches!(d, D::F32 | D::F16 | D::BF16 | D::F64))
        .map(|d| d.name())
        .collect();
    match floats.into_iter().collect::<Vec<_>>()[..] {
        ["f16"] => D::F16,
        ["bf16"] => D::BF16,
        _ => D::F32,
    }
}

/// The source mapped again into the artifact's config (with `--lossy`, so that what only
/// `--lossy` drops is listed rather than refused): the plan the artifact should follow.
fn replan(source: &Checkpoint, cfg: &ComerConfig) -> std::result::Result<Plan, String> {
    let det = detect::detect_checkpoint(source);
    let family = det.family().ok_or_else(|| det.reason.clone())?;
    let m = Mapping::parse(family.mapping()).map_err(|e| e.to_string())?;
    let (_, sd) = source.state_dict();
    let sd = m.normalise_keys(sd);
    let layout = crate::model::layout::target_layout(cfg);
    mapping::plan(&m, &layout, &sd, &PlanOptions { lossy: true, ..PlanOptions::default() }).map_err(|e| e.to_string())
}

/// The recorded source hash against the `--source` given: `None` while `import` verifies its
/// own file (the hash is still the placeholder it fills after), skipped when the artifact
/// records none or the source is not on disk.
fn source_hash_check(source: &Checkpoint, meta: &BTreeMap<String, String>) -> Option<Check> {
    const NAME: &str = "source sha256";
    let recorded = meta.get(crate::meta::SOURCE_SHA_KEY).map(|s| s.trim()).unwrap_or("");
    if !recorded.is_empty() && recorded.bytes().all(|b| b == b'0') {
        return None;
    }
    if recorded.is_empty() {
        return Some(Check::skipped(NAME, "the artifact records no source hash"));
    }
    if !source.path.exists() {
        return Some(Check::skipped(NAME, format!("{} is not on disk", source.path.display())));
    }
    Some(match formats::sha256(&source.path) {
        Ok(h) if h == recorded => Check::outcome(NAME, &[1], 1, None, Some(format!("{h} as recorded"))),
        Ok(h) => Check::outcome(
            NAME,
            &[1],
            1,
            Some(0),
            Some(format!("`{}` hashes to {h}, the artifact records {recorded}: another source", source.path.display())),
        ),
        Err(e) => Check::outcome(NAME, &[1], 1, Some(0), Some(format!("hashing {}: {e}", source.path.display()))),
    })
}

/// Every fresh parameter (CTI, MRFP, SPM, `level_embed`, fallbacks, index buffers)
/// regenerated from the seed the artifact records and upstream's init scheme, compared bit
/// for bit in the artifact's dtype. The first that differs is named.
fn fresh_check(plan: &Plan, ck: &Checkpoint) -> Check {
    let seed: u64 = ck.metadata.get("comer_port.seed").and_then(|s| s.parse().ok()).unwrap_or(0);
    let name = format!("fresh parameters (seed {seed})");
    let tensors = ck.tensors();
    let by_name: std::collections::HashMap<&str, &formats::TensorView> =
        tensors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let empty = std::collections::HashMap::new();
    let fresh: Vec<&mapping::Planned> =
        plan.targets.iter().filter(|p| matches!(p.origin, mapping::Origin::Fresh { .. })).collect();
    let n = fresh.len();
    for (i, p) in fresh.iter().enumerate() {
        let Some(got) = by_name.get(p.entry.name.as_str()) else {
            // An omitted int64 buffer (`--no-buffers`) is allowed; the key check names others.
            continue;
        };
        let same = match mapping::produce(p, &empty, &PlanOptions::default(), seed) {
            Ok(Values::F32(want)) => {
                let dtype = got.dtype;
                let got = got.to_f32();
                let round = |x: f32| match dtype {
                    formats::DType::F16 => half::f16::from_f32(x).to_f32(),
                    formats::DType::BF16 => half::bf16::from_f32(x).to_f32(),
                    _ => x,
                };
                got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.to_bits() == round(*w).to_bits())
            }
            Ok(Values::I64(want)) => got.to_f64().iter().map(|v| *v as i64).eq(want.iter().copied()),
            Err(_) => false,
        };
        if !same {
            return Check::outcome(
                name,
                &[n],
                n,
                Some(i),
                Some(format!("`{}` is not upstream's init from seed {seed}", p.entry.name)),
            );
        }
    }
    Check::outcome(name, &[n], n, None, Some(format!("{n} fresh tensors regenerated bit for bit")))
}
