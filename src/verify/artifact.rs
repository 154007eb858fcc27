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
use super::parity::{Result, SourceTaps, TapSet, artifact_failure, compare_taps, resize_patches, seeded_image, seeded_images, seeded_values};
use super::policy::{EXACT_BOUND, GOLDEN_BOUND, apply_approximations, approximations, fit_bound};
use super::target_vit::{TargetFlavour, target_lazy};
use crate::families::detect::{self, PosResize, QkvStyle, RelPos, SourceConfig};
use crate::families::{Family, Fit};
use crate::formats::{self, Checkpoint};
use crate::families::mapping::{self, Mapping, Plan, PlanOptions, Values};
use crate::meta::{ArtifactMeta, Transforms};
use crate::model::plain_vit::{RelPosTable, VitError, Weights};
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

/// The grid mapping parity runs at for a global-attention target whose position table is
/// the source's own (not resized at import) and which, like its source, resizes it bicubically
/// at run time: a quarter of the pretrain grid `tg`, at least 4x4. Both sides resize the same
/// table with the same filter, so the comparison stays exact, and every tensor of every block
/// still acts on every token, at about a sixteenth of the pretrain grid's cost (what keeps a
/// 4 GB ViT-g/14's verification near its import's time). The table rows the resize does not
/// read are held bit for bit by the `position table` check.
fn small_grid(tg: usize) -> usize {
    tg.div_ceil(4).max(4).min(tg)
}

/// BEiT targets: a quarter of the smallest window any block's relative-position table
/// defines (a global block's table spans the pretrain grid), at least 4x4 ([`small_grid`]).
/// At that grid every table can be cropped to the central offsets the grid uses
/// (`crop_table`), so each block runs as one unpadded window on both sides; the rows the
/// crop leaves out are held bit for bit by the `relative-position tables` check.
fn beit_parity_grid(cfg: &ComerConfig) -> usize {
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    let smallest = (0..cfg.depth)
        .map(|j| match (cfg.window_attn.get(j), cfg.window_size.get(j)) {
            (Some(true), Some(Some(w))) => *w,
            _ => tg,
        })
        .filter(|w| *w > 0)
        .min()
        .unwrap_or(tg);
    small_grid(smallest)
}

/// The `(2g-1)^2` rows of a `(2w-1)^2`-row relative-position table that a `g x g` window
/// reads: offsets `-(g-1)..=g-1` on each axis, the table's centre (`g <= w`).
fn crop_table(
    key: &str,
    table: &RelPosTable,
    g: usize,
) -> std::result::Result<RelPosTable, VitError> {
    let w = table.window;
    if g == w {
        return Ok(table.clone());
    }
    let (s, t) = (2 * w - 1, 2 * g - 1);
    let heads = table.table.dim(1).map_err(VitError::tensor(key))?;
    let crop = (|| {
        table
            .table
            .reshape((s, s, heads))? // (2w-1, 2w-1, H): rows (dy, dx)
            .narrow(0, w - g, t)?
            .narrow(1, w - g, t)?
            .contiguous()?
            .reshape((t * t, heads)) // ((2g-1)^2, H)
    })()
    .map_err(VitError::tensor(key))?;
    Ok(RelPosTable {
        table: crop,
        window: g,
    })
}

/// BEiT sources into `beit-comer`: align both sides' relative-position tables to the parity
/// grid `g`, block by block as the source streams by (`tgt_tables`: the artifact's, per
/// block, cropped in place). Where the import resized a block's table (a 14-window table to a 56-window
/// block, upstream's `resize_rel_pos_bias`-style interpolation), the source side gets the
/// reference resize of its own table (`mapping::produce`, the function the
/// `relpos_bicubic`/`relpos_geometric` goldens certify), and the artifact's table is compared
/// with that reference in full (the returned check). Both sides then read the centre of their
/// table that a `g x g` window uses, so the block forward proves every other tensor of the
/// block exactly. [`TableAlign::finish`] gives the table check (when a table was compared)
/// and the resized blocks.
struct TableAlign<'s> {
    source: &'s Checkpoint,
    cfg: &'s ComerConfig,
    dtype_of: &'s dyn Fn(&str) -> Option<formats::DType>,
    opts: PlanOptions,
    g: usize,
    /// The artifact's tables, per block, cropped in place as their blocks stream by.
    tgt_tables: Vec<Option<RelPosTable>>,
    resized: Vec<usize>,
    checked: Vec<usize>,
    got_all: Vec<f32>,
    want_all: Vec<f32>,
    first_bad: Option<String>,
    plan_ctx: Option<(Plan, Vec<(String, &'s formats::TensorView)>)>,
    /// An artifact table that cannot be read or cropped: a failed check, not an error.
    target_error: Option<VitError>,
}

impl<'s> TableAlign<'s> {
    fn new(
        source: &'s Checkpoint,
        cfg: &'s ComerConfig,
        transforms: &Transforms,
        dtype_of: &'s dyn Fn(&str) -> Option<formats::DType>,
        g: usize,
        tgt_tables: Vec<Option<RelPosTable>>,
    ) -> TableAlign<'s> {
        let opts = transform_options(transforms);
        TableAlign {
            source,
            cfg,
            dtype_of,
            opts,
            g,
            tgt_tables,
            resized: Vec::new(),
            checked: Vec::new(),
            got_all: Vec::new(),
            want_all: Vec::new(),
            first_bad: None,
            plan_ctx: None,
            target_error: None,
        }
    }

    /// Source block `j` as it streams by: its table and the artifact's aligned to the grid.
    fn block(&mut self, j: usize, sb: &mut crate::model::plain_vit::Block) -> Result<()> {
        let key = format!("blocks.{j}.attn.relative_position_bias_table");
        let (Some(st), Some(Some(tt))) = (sb.attn.rel_pos.as_ref(), self.tgt_tables.get(j)) else {
            return Ok(());
        };
        let g = self.g;
        if tt.window < g {
            return Ok(());
        }
        let reference = if tt.window == st.window {
            st.clone()
        } else {
            if self.plan_ctx.is_none() {
                let plan = replan_with(self.source, self.cfg, &self.opts).map_err(|reason| VerifyError::Fixture {
                    path: self.source.path.clone(),
                    reason: format!("the source could not be mapped again: {reason}"),
                })?;
                self.plan_ctx = Some((plan, source_keys(self.source)));
            }
            let Some((plan, sd)) = self.plan_ctx.as_ref() else {
                return Ok(());
            };
            let lookup: std::collections::HashMap<&str, &formats::TensorView> =
                sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let want = plan
                .targets
                .iter()
                .find(|p| p.entry.name == key)
                .and_then(|p| match mapping::produce(p, &lookup, &self.opts, 0) {
                    Ok(Values::F32(v)) => Some(v),
                    _ => None,
                })
                .ok_or_else(|| VerifyError::Fixture {
                    path: self.source.path.clone(),
                    reason: format!("the source gives no reference for `{key}`"),
                })?;
            let heads = tt.table.dim(1)?;
            let rows = want.len() / heads.max(1);
            self.resized.push(j);
            RelPosTable {
                table: Tensor::from_vec(want, (rows, heads), &Device::Cpu)?,
                window: tt.window,
            }
        };
        // The crop reads only the table's centre: the rest is compared in full here.
        if tt.window > g || self.resized.last() == Some(&j) {
            let got = tt.table.flatten_all()?.to_vec1::<f32>()?;
            // The reference in the artifact's dtype, rounded as `import::encode` rounds.
            let round = |x: f32| match (self.dtype_of)(&key) {
                Some(formats::DType::F16) => half::f16::from_f32(x).to_f32(),
                Some(formats::DType::BF16) => half::bf16::from_f32(x).to_f32(),
                _ => x,
            };
            let want: Vec<f32> = reference.table.flatten_all()?.to_vec1::<f32>()?.into_iter().map(round).collect();
            if self.first_bad.is_none()
                && (got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| a.to_bits() != b.to_bits()))
            {
                self.first_bad = Some(key.clone());
            }
            self.got_all.extend_from_slice(&got);
            self.want_all.extend_from_slice(&want);
            self.checked.push(j);
        }
        match (crop_table(&key, &reference, g), crop_table(&key, tt, g)) {
            (Ok(s), Ok(t)) => {
                sb.attn.rel_pos = Some(s);
                self.tgt_tables[j] = Some(t);
            }
            (Err(e), _) | (_, Err(e)) => {
                self.target_error.get_or_insert(e);
            }
        }
        Ok(())
    }

    /// After the source's last block: the table check (when a table was compared) and the
    /// resized blocks, or the artifact's table that could not be used.
    #[allow(clippy::type_complexity)]
    fn finish(self) -> std::result::Result<(Option<Check>, Vec<usize>, Vec<Option<RelPosTable>>), VitError> {
        if let Some(e) = self.target_error {
            return Err(e);
        }
        let TableAlign { resized, checked, got_all, want_all, first_bad, opts, tgt_tables, .. } = self;
        if checked.is_empty() {
            return Ok((None, resized, tgt_tables));
        }
        let method = if opts.relpos_geometric { "geometric" } else { "bicubic" };
        let mut c = Check::new(
            format!("relative-position tables ({} blocks)", checked.len()),
            &[got_all.len()],
            &got_all,
            &want_all,
            EXACT_BOUND,
        );
        if got_all.len() != want_all.len() {
            c.passed = false;
        }
        let copied: Vec<&usize> = checked.iter().filter(|j| !resized.contains(j)).collect();
        let mut what = Vec::new();
        if !resized.is_empty() {
            what.push(format!("blocks {resized:?} resized at import ({method}) against the reference resize of the source's table"));
        }
        if !copied.is_empty() {
            what.push(format!("blocks {copied:?} against the source's own table (cls rows dropped)"));
        }
        c.note = Some(match first_bad {
            Some(k) => {
                c.passed = false;
                format!("`{k}` differs from its reference; compared: {}", what.join("; "))
            }
            None => format!(
                "{}: bit for bit{}",
                what.join("; "),
                if resized.is_empty() {
                    String::new()
                } else {
                    format!(" (the relpos_{method} goldens certify that resize against upstream)")
                }
            ),
        });
        Ok((Some(c), resized, tgt_tables))
    }
}

/// The artifact's patch kernel against the reference resize of the source's (`ps` -> `pt`
/// pixels, the transform and method the mapping uses), bit for bit in the artifact's dtype.
#[allow(clippy::too_many_arguments)]
fn kernel_check(
    source: &Checkpoint,
    artifact: &Checkpoint,
    cfg: &ComerConfig,
    transforms: &Transforms,
    dtype_of: &dyn Fn(&str) -> Option<formats::DType>,
    ps: usize,
    pt: usize,
) -> Result<Check> {
    let method = if transforms.patch_resize == "pinv" { "pinv" } else { "bilinear" };
    reference_check(
        (source, artifact, cfg, transforms, dtype_of),
        "patch_embed.proj.weight",
        format!("patch kernel {ps} -> {pt} ({method})"),
        &format!("the {method} resize of the source's kernel"),
        " (the sources/dinov2 bilinear_16 and pi_resize_16 goldens certify that resize against upstream)",
    )
}

/// What [`reference_check`] reads: the source, the artifact, its config, its recorded
/// transforms and its stored dtypes.
type Sides<'a> = (
    &'a Checkpoint,
    &'a Checkpoint,
    &'a ComerConfig,
    &'a Transforms,
    &'a dyn Fn(&str) -> Option<formats::DType>,
);

/// Artifact tensor `key` against the value the mapping gives it from the source (under the
/// transforms the artifact records), bit for bit in the artifact's dtype; `what` says what
/// that reference is, `certified` (when it holds) what else vouches for it.
fn reference_check(sides: Sides, key: &str, name: String, what: &str, certified: &str) -> Result<Check> {
    let (source, artifact, cfg, transforms, dtype_of) = sides;
    let opts = transform_options(transforms);
    let want = match reference_of(source, cfg, &opts, key) {
        Ok(v) => v,
        Err(reason) => return Ok(Check::outcome(name, &[1], 1, Some(0), Some(format!("no reference for `{key}`: {reason}")))),
    };
    let Some(got) = artifact_tensor(artifact, key) else {
        return Ok(Check::outcome(name, &[1], 1, Some(0), Some(format!("`{key}` is missing"))));
    };
    let got = got?;
    let shape = got.dims().to_vec();
    let got = got.flatten_all()?.to_vec1::<f32>()?;
    let round = |x: f32| match dtype_of(key) {
        Some(formats::DType::F16) => half::f16::from_f32(x).to_f32(),
        Some(formats::DType::BF16) => half::bf16::from_f32(x).to_f32(),
        _ => x,
    };
    let want: Vec<f32> = want.into_iter().map(round).collect();
    let mut c = Check::new(name, &shape, &got, &want, EXACT_BOUND);
    let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    c.passed = same;
    c.note = Some(if same { format!("`{key}` equals {what}, bit for bit{certified}") } else { format!("`{key}` is not {what}") });
    Ok(c)
}

/// The value the mapping gives target `key` from `source` under `opts` (f32).
fn reference_of(source: &Checkpoint, cfg: &ComerConfig, opts: &PlanOptions, key: &str) -> std::result::Result<Vec<f32>, String> {
    let plan = replan_with(source, cfg, opts)?;
    let sd = source_keys(source);
    let lookup: std::collections::HashMap<&str, &formats::TensorView> = sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let p = plan.targets.iter().find(|p| p.entry.name == key).ok_or_else(|| format!("the mapping gives no `{key}`"))?;
    match mapping::produce(p, &lookup, opts, 0) {
        Ok(Values::F32(v)) => Ok(v),
        Ok(Values::I64(_)) => Err(format!("`{key}` is an integer buffer")),
        Err(e) => Err(e.to_string()),
    }
}

/// A two-sided comparison that ran (not skipped, not an artifact that failed to load).
fn is_comparison(c: &Check) -> bool {
    c.skipped.is_none() && c.bound > 0.0
}

/// (a) Mapping parity of `artifact` (target tensors) against its `source` checkpoint.
///
/// Images: the parity grid and, unless that grid is the small one, a non-square size
/// (`seeded_images`). A global-attention target whose position table is the source's runs
/// at [`small_grid`] only, the table held bit for bit (`position table`). Where the source's
/// absolute position grid differs from the target's, the table was resized bicubically at
/// import; at the target's pretrain size the source model resizes its own table to the same
/// grid with the same bicubic filter at run time, so that image is held to the family's
/// bound; at the second size the artifact resizes an already-resized table (two bicubic
/// resizes against one) and the figures are reported as skipped. Windowed targets run at
/// the window's grid. BEiT targets run at [`beit_parity_grid`], every table cropped to that
/// grid and checked in full against its reference ([`TableAlign`]); only that square size
/// runs. Both models stream block by block (`parity::streamed_taps`).
/// `dtype_of` gives an artifact tensor's stored dtype (references are rounded to it);
/// `sizes` adds images (target pixels, `verify --size`), judged as the second size is.
pub fn parity_checks(
    source: &Checkpoint,
    artifact: &Checkpoint,
    cfg: &ComerConfig,
    transforms: &Transforms,
    dtype_of: &dyn Fn(&str) -> Option<formats::DType>,
    sizes: &[(usize, usize)],
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
    let tg = cfg.pretrain_size / cfg.patch_size.max(1);
    // Windowed blocks: parity runs at the grid of one window (exactly global attention).
    let windowed = cfg.window_attn.iter().any(|w| *w);
    let beit =
        TargetFlavour::of(cfg.flavor) == TargetFlavour::BeitComer && sc.rel_pos != RelPos::None;
    let resized_pos = sc.rel_pos == RelPos::None && sc.pretrain_grid.is_some_and(|g| g != (tg, tg));
    // A global-attention target whose table is the source's and is resized at run time as
    // upstream resizes it runs at a small grid: exact all the same, at a fraction of the cost.
    let small = !beit && !windowed && !resized_pos && sc.pos_resize == PosResize::Bicubic && small_grid(tg) < tg;
    let pg = if beit {
        beit_parity_grid(cfg)
    } else if small {
        small_grid(tg)
    } else {
        parity_grid(cfg).unwrap_or(tg)
    };
    // The source sees tg x tg patches of its own size. A target with another patch size sees
    // every patch resized (FlexiViT's identity: with the pseudo-inverse kernel the tokens are
    // the same; with upstream's bilinear kernel they are not, and the figures say by how much).
    let (ps, pt) = (sc.patch_size.max(1), cfg.patch_size.max(1));
    // Images on the source's side: the parity grid, a non-square second size, and each
    // `--size` (target pixels, whole target patches), as the same grid of source patches.
    let mut grids: Vec<(usize, usize)> = vec![(pg, pg)];
    let mut p = seeded_images(seed, (pg * ps, pg * ps), ps)?;
    if small {
        // One grid: a second one would prove no more of the mapping (both sides resize the
        // same table with the same filter at any grid), and costs a pass over the weights.
        p.truncate(1);
    }
    if let Some((_, second)) = p.get(1) {
        grids.push((second.dims()[2] / ps, second.dims()[3] / ps));
    }
    for &(h, w) in sizes {
        grids.push((h / pt, w / pt));
    }
    let mut inputs = Vec::new();
    for (k, &(gh, gw)) in grids.iter().enumerate() {
        let img = match p.get(k) {
            Some((_, img)) => img.clone(),
            None => seeded_image(seed.wrapping_add(k as u64), (gh * ps, gw * ps))?,
        };
        let name = format!("image{}x{}", gh * ps, gw * ps);
        if ps == pt {
            inputs.push(((gh, gw), (name, img.clone(), img)));
        } else {
            let t = resize_patches(&img, ps, pt)?;
            let (h, w) = (t.dims()[2], t.dims()[3]);
            inputs.push(((gh, gw), (format!("{name} -> {h}x{w}"), img, t)));
        }
    }
    // Every size but the parity grid: run, run and report as skipped with its figures, or skip.
    let mut run = Vec::new();
    let mut skips = Vec::new();
    for (k, (grid, s)) in inputs.into_iter().enumerate() {
        let skip: Option<(bool, String)> = if k == 0 || grid == (pg, pg) {
            None
        } else if sc.rel_pos != RelPos::None {
            Some((
                false,
                format!(
                    "relative-position tables define square windows: every block is one {pg}x{pg} window only on the \
                     {pg}x{pg} grid, and BEiT has no forward at another grid"
                ),
            ))
        } else if windowed {
            Some((false, format!("windowed attention equals global attention only on a {pg}x{pg} grid (one whole window)")))
        } else if resized_pos {
            let g = sc.pretrain_grid.unwrap_or_default();
            Some((
                true,
                format!(
                    "position table resized {}x{} -> {tg}x{tg} at import: at this size the artifact resizes it a \
                     second time, the source once from {}x{}; two bicubic resizes against one have no stated bound",
                    g.0, g.1, g.0, g.1
                ),
            ))
        } else if sc.pos_resize != PosResize::Bicubic {
            Some((
                true,
                format!(
                    "the source resizes its position table {:?} at run time, upstream's ViT-CoMer bicubic: at a \
                     grid other than {tg}x{tg} the two functions differ, with no stated bound",
                    sc.pos_resize
                ),
            ))
        } else {
            None
        };
        match skip {
            None => run.push(s),
            Some((figures, reason)) => skips.push((s, figures, reason)),
        }
    }
    // One block's weights at a time: the source streams through every input in one pass
    // (its taps kept), then the artifact's branch streams through every comparison in one.
    let depth = cfg.depth;
    let mut tgt_tables: Vec<Option<RelPosTable>> = Vec::new();
    if beit {
        for j in 0..depth {
            let key = format!("blocks.{j}.attn.relative_position_bias_table");
            tgt_tables.push(match artifact_tensor(artifact, &key) {
                Some(t) => match RelPosTable::from_table(&key, &t?) {
                    Ok(t) => Some(t),
                    Err(e) => return Ok(vec![artifact_failure(&format!("{NAME} ({})", det.family), &e)]),
                },
                None => None,
            });
        }
    }
    let mut table_check = None;
    let mut resized_tables = Vec::new();
    let figure_inputs: Vec<(String, Tensor, Tensor)> = skips.iter().filter(|(_, f, _)| *f).map(|(s, _, _)| s.clone()).collect();
    let (run_taps, skip_taps) = {
        let all: Vec<(String, Tensor, Tensor)> = run.iter().chain(&figure_inputs).cloned().collect();
        let src_w = Weights::lazy_f32(source);
        let src = family.source_lazy(&src_w, sc)?;
        let mut align = beit.then(|| TableAlign::new(source, cfg, transforms, dtype_of, pg, std::mem::take(&mut tgt_tables)));
        let mut taps = SourceTaps::of(&src, &all, &mut |j, b| match align.as_mut() {
            Some(a) => a.block(j, b),
            None => Ok(()),
        })?;
        if let Some(a) = align {
            match a.finish() {
                Ok((c, r, t)) => (table_check, resized_tables, tgt_tables) = (c, r, t),
                Err(e) => return Ok(vec![artifact_failure(&format!("{NAME} ({})", det.family), &e)]),
            }
        }
        let skip_taps = taps.split_off(run.len());
        (taps, skip_taps)
    };
    let tgt_w = Weights::lazy_f32(artifact);
    let tgt = match target_lazy(TargetFlavour::of(cfg.flavor), &tgt_w, cfg.num_heads) {
        Ok(t) => t,
        Err(e) => return Ok(vec![artifact_failure(&format!("{NAME} ({})", det.family), &e)]),
    };
    // A kernel resized bilinearly (upstream's convert_14to16) changes the function: the
    // source's own patch tokens go into both ViT branches, which proves everything after the
    // kernel exactly, and the kernel is held bit for bit to its reference resize.
    let bilinear_kernel = ps != pt && transforms.patch_resize != "pinv";
    let shared_set = bilinear_kernel && !matches!(fit, Fit::Inexpressible(_));
    let mut sets = vec![
        TapSet { src: &run_taps, inputs: &run, bound, shared_patches: false },
        TapSet { src: &skip_taps, inputs: &figure_inputs, bound: EXACT_BOUND, shared_patches: false },
    ];
    if shared_set {
        sets.push(TapSet { src: &run_taps, inputs: &run, bound, shared_patches: true });
    }
    let mut reports = compare_taps(&sets, &tgt, &mut |j, b| {
        if let Some(Some(t)) = tgt_tables.get(j) {
            b.attn.rel_pos = Some(t.clone());
        }
    })?
    .into_iter();
    let mut checks = reports.next().unwrap_or_default().checks;
    let mut figured = reports.next().unwrap_or_default().checks.into_iter();
    let mut shared = Vec::new();
    if shared_set {
        shared.push(kernel_check(source, artifact, cfg, transforms, dtype_of, ps, pt)?);
        for mut c in reports.next().unwrap_or_default().checks {
            c.name = format!("{} ({})", c.name, det.family);
            if is_comparison(&c) && c.note.is_none() {
                c.note = Some(format!(
                    "the source's own {ps}-pixel patch tokens into both ViT branches: everything after the patch \
                     kernel, exactly{}",
                    why.as_deref().map(|w| format!("; {w}")).unwrap_or_default()
                ));
            }
            if c.skipped.is_none() {
                c.approximation = match &fit {
                    Fit::EpsChange { from } => Some(format!("LayerNorm eps {from:e} -> {:e}", crate::families::TARGET_EPS)),
                    Fit::Approximation { what, .. } => Some(what.clone()),
                    Fit::Exact | Fit::Inexpressible(_) => None,
                };
            }
            shared.push(c);
        }
    }
    for ((input, _, _), figures, reason) in skips {
        if figures {
            if let Some(c) = figured.next() {
                checks.push(if is_comparison(&c) { c.into_skipped(reason.clone()) } else { c });
            }
        } else {
            checks.push(Check::skipped(format!("{NAME} {input}"), reason));
        }
    }
    for c in &mut checks {
        c.name = format!("{} ({})", c.name, det.family);
        if !is_comparison(c) {
            continue;
        }
        if beit && c.note.is_none() {
            c.note = Some(if resized_tables.is_empty() {
                format!(
                    "every block runs as one {pg}x{pg} window without padding, reading the centre of its table that \
                     the grid uses (tables larger than the grid are checked in full in `relative-position tables`)"
                )
            } else {
                format!(
                    "every block runs as one {pg}x{pg} window without padding, reading the centre of its table that \
                     the grid uses (tables checked in full in `relative-position tables`); blocks {resized_tables:?} \
                     have other windows than the source, with tables resized at import: their source side reads the \
                     reference resize of the source's table"
                )
            });
        }
        if windowed && c.note.is_none() {
            c.note = Some(format!(
                "blocks with windowed attention run on a {pg}x{pg} grid, one window without padding: exactly global \
                 attention; the position table is resized {tg}x{tg} -> {pg}x{pg} on both sides, same bicubic filter"
            ));
        }
        if small && c.note.is_none() {
            c.note = Some(format!(
                "every block runs on a small grid: both sides resize the same {tg}x{tg} position table to it with the \
                 same bicubic filter, so the comparison is exact; the table itself is checked in `position table`"
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
                "declared approximation: the patch kernel resized {ps} -> {pt} with {} interpolation at import \
                 (upstream's convert_14to16) computes other tokens; measured here end to end, the source on \
                 {ps}-pixel patches against the artifact on the same patches resized to {pt} pixels, with no bound \
                 that can be stated (the rest of the mapping is proven from shared patch tokens); `--patch-resize \
                 pinv` (FlexiViT's pseudo-inverse) makes the whole check exact",
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
        if c.skipped.is_none() {
            c.approximation = match &fit {
                Fit::EpsChange { from } => Some(format!("LayerNorm eps {from:e} -> {:e}", crate::families::TARGET_EPS)),
                Fit::Approximation { what, .. } => Some(what.clone()),
                Fit::Exact | Fit::Inexpressible(_) => None,
            };
        }
    }
    if !shared.is_empty() {
        checks.splice(0..0, shared);
    }
    if let Some(mut c) = table_check {
        c.name = format!("{} ({})", c.name, det.family);
        checks.insert(0, c);
    }
    if small {
        let what = "the source's table in upstream's layout (the mapping's own transform of it)";
        let c = reference_check((source, artifact, cfg, transforms, dtype_of), "pos_embed", "position table".into(), what, "")?;
        checks.insert(0, c);
    }
    Ok(checks)
}

/// (b) The full backbone on a seeded `(1, 3, img_size, img_size)` image: f1..f4 finite with
/// shape `(1, embed_dim, S/4, S/4)` … `(1, embed_dim, S/32, S/32)` (and beit-comer's `x`).
pub fn backbone_checks(model: &Comer, cfg: &ComerConfig, seed: u64) -> Result<Vec<Check>> {
    let (img, s) = backbone_image(cfg, seed)?;
    backbone_figures(&model.forward(&img, "image")?, cfg, s)
}

/// The seeded backbone image `(1, 3, S, S)` and its side S (`policy::backbone_size`).
fn backbone_image(cfg: &ComerConfig, seed: u64) -> Result<(Tensor, usize)> {
    let s = super::policy::backbone_size(cfg.img_size);
    Ok((Tensor::from_vec(seeded_values(seed, 3 * s * s), (1, 3, s, s), &Device::Cpu)?, s))
}

/// The checks of [`backbone_checks`] on the outputs of a forward at side `s`.
fn backbone_figures(out: &crate::model::Outputs, cfg: &ComerConfig, s: usize) -> Result<Vec<Check>> {
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
/// is a failed check naming the key. `sizes` adds mapping-parity images (`verify --size`).
/// Each group of checks is a stage of `progress` (`verify: round trip`, `verify: key set`, …).
/// Shared by `verify`, `demo` and `import`.
pub fn artifact_report(
    artifact: &Path,
    source: Option<&Checkpoint>,
    golden: Option<&Path>,
    cfg: &ComerConfig,
    sizes: &[(usize, usize)],
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
    if let Some(source) = source {
        // Hashed beside the parity forwards (one core's worth for ~1 s per GB).
        let hashing = start_source_hash(source, &ck.metadata);
        let g = Group::begin(progress, "mapping parity", &report);
        let mut parity = super::Report::default();
        let transforms = ArtifactMeta::transforms_of(&ck.metadata);
        let dtypes: BTreeMap<String, formats::DType> = ck
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.dtype))
            .collect();
        let dtype_of = |k: &str| dtypes.get(k).copied();
        for c in parity_checks(source, &ck, cfg, &transforms, &dtype_of, sizes, seed)? {
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
        if let Some(c) = source_hash_check(source, &ck.metadata, hashing) {
            report.push(c);
        }
        match &replanned {
            Ok(plan) => report.push(fresh_check(plan, &ck)),
            Err(e) => report.push(Check::skipped("fresh parameters", format!("the source could not be mapped again: {e}"))),
        }
        report.push(mapped_check(source, &ck, cfg, &transforms));
        g.end(&report);
    }
    if let Some(dir) = golden.filter(|d| golden_folder::is_source_folder(d)) {
        let g = Group::begin(progress, "source goldens", &report);
        let target = vit_branch(&ck)?;
        let side = golden_folder::ArtifactSide { weights: &target, metadata: &ck.metadata, cfg };
        for c in golden_folder::source_golden_checks(dir, &side, source)? {
            report.push(c);
        }
        g.end(&report);
    }
    let g = Group::begin(progress, "backbone", &report);
    let forward_golden = golden.filter(|d| !golden_folder::is_source_folder(d));
    if forward_golden.is_none() {
        // One interaction's weights at a time, read from the mapped artifact.
        let store = crate::model::Store::from_safetensors(artifact)?;
        let (img, s) = backbone_image(cfg, seed)?;
        match Comer::forward_streaming(&store.root(), cfg, &img, "image").and_then(|o| store.finish().map(|()| o)) {
            Ok(out) => {
                for c in backbone_figures(&out, cfg, s)? {
                    report.push(c);
                }
            }
            Err(e) => report.push(Check::outcome("backbone load", &[1], 1, Some(0), Some(e.to_string()))),
        }
        g.end(&report);
        return Ok(report);
    }
    // The store is dropped once the model holds what it reads.
    let model = {
        let store = crate::model::Store::from_safetensors(artifact)?;
        Comer::new(&store.root(), cfg).and_then(|m| store.finish().map(|()| m))
    };
    match model {
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

/// The artifact's ViT branch (`patch_embed`, `pos_embed`, `blocks.*` and BEiT's shared
/// table) in f32, for the plain-ViT forward: the CTI/MRFP/SPM parts and the int64 index
/// buffers are left on disk.
fn vit_branch(ck: &Checkpoint) -> Result<Weights> {
    let (_, tensors) = ck.state_dict();
    let mut w = Weights::default();
    for (name, view) in tensors {
        let vit = ["patch_embed.", "pos_embed", "blocks.", "rel_pos_bias.", "cls_token"].iter().any(|p| name.starts_with(p));
        if !vit || view.dtype == formats::DType::I64 {
            continue;
        }
        w.insert_f32(&name, view.to_f32(), &view.shape)?;
        view.release();
    }
    Ok(w)
}

/// Tensor `key` of the artifact in f32, when present.
fn artifact_tensor(ck: &Checkpoint, key: &str) -> Option<Result<Tensor>> {
    let (_, tensors) = ck.state_dict();
    let (_, view) = tensors.into_iter().find(|(k, _)| k == key)?;
    Some(Tensor::from_vec(view.to_f32(), view.shape.clone(), &Device::Cpu).map_err(VerifyError::from))
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
    replan_with(source, cfg, &PlanOptions { lossy: true, ..PlanOptions::default() })
}

/// The source's state dict under the names its family's mapping reads (`normalise_keys`;
/// as stored when no family is recognised): what `mapping::produce` looks keys up in.
fn source_keys(source: &Checkpoint) -> Vec<(String, &formats::TensorView)> {
    let (_, sd) = source.state_dict();
    match detect::detect_checkpoint(source).family().map(|f| Mapping::parse(f.mapping())) {
        Some(Ok(m)) => m.normalise_keys(sd),
        _ => sd,
    }
}

/// The plan options an artifact was made with (its recorded transforms), `--lossy` on so
/// that what only `--lossy` drops is listed rather than refused.
fn transform_options(transforms: &Transforms) -> PlanOptions {
    PlanOptions {
        lossy: true,
        relpos_geometric: transforms.relpos_resize == "geometric",
        patch_pinv: transforms.patch_resize == "pinv",
    }
}

/// [`replan`] with the import's transform options.
fn replan_with(source: &Checkpoint, cfg: &ComerConfig, opts: &PlanOptions) -> std::result::Result<Plan, String> {
    let det = detect::detect_checkpoint(source);
    let family = det.family().ok_or_else(|| det.reason.clone())?;
    let m = Mapping::parse(family.mapping()).map_err(|e| e.to_string())?;
    let (_, sd) = source.state_dict();
    let sd = m.normalise_keys(sd);
    let layout = crate::model::layout::target_layout(cfg);
    mapping::plan(&m, &layout, &sd, opts).map_err(|e| e.to_string())
}

/// The source's SHA-256 being computed on a thread of its own.
type SourceHash = std::thread::JoinHandle<std::io::Result<String>>;

/// The source hash the artifact records, when there is one to compare with `source`; else
/// why [`source_hash_check`] compares none: `None` while `import` verifies its own file (the
/// hash is still the placeholder it fills after), the reason for a skip when the artifact
/// records none or the source is not on disk.
fn recorded_source_hash<'m>(source: &Checkpoint, meta: &'m BTreeMap<String, String>) -> std::result::Result<&'m str, Option<String>> {
    let recorded = meta.get(crate::meta::SOURCE_SHA_KEY).map(|s| s.trim()).unwrap_or("");
    if !recorded.is_empty() && recorded.bytes().all(|b| b == b'0') {
        return Err(None);
    }
    if recorded.is_empty() {
        return Err(Some("the artifact records no source hash".into()));
    }
    if !source.path.exists() {
        return Err(Some(format!("{} is not on disk", source.path.display())));
    }
    Ok(recorded)
}

/// Start hashing the source when [`source_hash_check`] will need it.
fn start_source_hash(source: &Checkpoint, meta: &BTreeMap<String, String>) -> Option<SourceHash> {
    recorded_source_hash(source, meta).ok()?;
    let path = source.path.clone();
    std::thread::Builder::new().name("source-sha256".into()).spawn(move || formats::sha256(&path)).ok()
}

/// The recorded source hash against the `--source` given (see [`recorded_source_hash`] for
/// when there is none to compare). The hash is computed by `hashing` (started by
/// [`start_source_hash`] so that it runs beside the parity forwards) or here.
fn source_hash_check(source: &Checkpoint, meta: &BTreeMap<String, String>, hashing: Option<SourceHash>) -> Option<Check> {
    const NAME: &str = "source sha256";
    let recorded = match recorded_source_hash(source, meta) {
        Ok(r) => r,
        Err(skip) => return skip.map(|why| Check::skipped(NAME, why)),
    };
    let hashed = match hashing.map(|h| h.join()) {
        Some(Ok(r)) => r,
        _ => formats::sha256(&source.path),
    };
    Some(match hashed {
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

/// Every tensor the artifact takes from the source against the mapping of the source (under
/// the transforms the artifact records), bit for bit in the artifact's dtype. Mapping parity
/// holds the forward to a relative bound, which a slightly altered weight can stay within
/// (one q weight of a real-shaped DeiT III block moved by 0.01: 7e-6 of 1e-5); this cannot
/// be fooled that way. Plain renames compare the two files' bytes in place; the first tensor
/// that differs is named.
fn mapped_check(source: &Checkpoint, ck: &Checkpoint, cfg: &ComerConfig, transforms: &Transforms) -> Check {
    const NAME: &str = "mapped tensors";
    let opts = transform_options(transforms);
    let plan = match replan_with(source, cfg, &opts) {
        Ok(p) => p,
        Err(e) => return Check::skipped(NAME, format!("the source could not be mapped again: {e}")),
    };
    let sd = source_keys(source);
    let lookup: std::collections::HashMap<&str, &formats::TensorView> = sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let tensors = ck.tensors();
    let by_name: std::collections::HashMap<&str, &formats::TensorView> = tensors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mapped: Vec<&mapping::Planned> =
        plan.targets.iter().filter(|p| matches!(p.origin, mapping::Origin::Source { .. })).collect();
    let n = mapped.len();
    for (i, p) in mapped.iter().enumerate() {
        // A missing key is the key-set check's to name.
        let Some(got) = by_name.get(p.entry.name.as_str()) else { continue };
        let renamed = match &p.origin {
            mapping::Origin::Source { keys, transform: mapping::Transform::Rename, .. } if keys.len() == 1 => lookup.get(keys[0].as_str()),
            _ => None,
        };
        let same = match renamed.filter(|v| v.dtype == got.dtype && v.shape == got.shape) {
            // The same bytes under a new name: compared where they lie.
            Some(v) => {
                match (v.le_bytes_borrowed(), got.le_bytes_borrowed()) {
                    (Some(a), Some(b)) => a == b,
                    _ => v.to_le_bytes() == got.to_le_bytes(),
                }
            }
            None => match mapping::produce(p, &lookup, &opts, 0) {
                Ok(Values::F32(want)) => {
                    let round = |x: f32| match got.dtype {
                        formats::DType::F16 => half::f16::from_f32(x).to_f32(),
                        formats::DType::BF16 => half::bf16::from_f32(x).to_f32(),
                        _ => x,
                    };
                    let g = got.to_f32();
                    g.len() == want.len() && g.iter().zip(&want).all(|(g, w)| g.to_bits() == round(*w).to_bits())
                }
                Ok(Values::I64(want)) => got.to_f64().iter().map(|v| *v as i64).eq(want.iter().copied()),
                Err(_) => false,
            },
        };
        got.release();
        // Read once: the source's pages leave the resident set too.
        if let mapping::Origin::Source { keys, .. } = &p.origin {
            keys.iter().filter_map(|k| lookup.get(k.as_str())).for_each(|v| v.release());
        }
        if !same {
            return Check::outcome(NAME, &[n], n, Some(i), Some(format!("`{}` is not the mapping of the source", p.entry.name)));
        }
    }
    Check::outcome(NAME, &[n], n, None, Some(format!("{n} tensors equal the mapping of the source, bit for bit")))
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
        // A relative-position index (79 MB for a 56×56 window) is checked in place.
        if let mapping::Origin::Fresh { init: crate::model::layout::Init::RelPosIndex { window }, .. } = &p.origin
            && got.dtype == formats::DType::I64
            && let Some(bytes) = got.le_bytes_borrowed()
        {
            let at = |k: usize| i64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().expect("8 bytes"));
            let same = bytes.len() % 8 == 0 && crate::model::vit::relative_position_index_matches(bytes.len() / 8, *window, at);
            got.release();
            if !same {
                return Check::outcome(name, &[n], n, Some(i), Some(format!("`{}` is not upstream's relative_position_index", p.entry.name)));
            }
            continue;
        }
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
        got.release();
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
