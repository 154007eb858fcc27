//! The shared mapping engine: reads a family's `mappings/<family>.toml` (ordered regex rules,
//! named transforms from a closed set, explicit drops with a reason) and plans, for every
//! target key of an upstream layout, where its value comes from — source key(s) and a
//! transform, or upstream's fresh-init scheme — and, for every source key, what became of it.
//!
//! Rules are target-driven: the first `[[map]]` rule whose `target` regex matches a target
//! key and whose `sources` (with `$1`… substituted) all exist in the checkpoint feeds it.
//! A matching rule whose sources are absent falls through to the next matching rule, then to
//! its `fallback` (`init`, `ones`, `zeros`); with none, the import fails naming the key.
//! Target keys no rule matches are fresh (the CNN/CTI parts, derived buffers). A source key no
//! rule consumed must be named by a `[[drop]]` rule; `lossy = true` drops need `--lossy`.

use super::error::ImportError;
use super::init;
use super::transforms as tf;
use crate::formats::TensorView;
use crate::model::layout::{Init, TargetEntry};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The closed set of transforms a mapping rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Same values under a new name (dtype cast to the output dtype only).
    Rename,
    /// 2-D transpose (Flax Dense kernels).
    Transpose,
    /// Concatenate the sources along dim 0 (q/k/v → `qkv`).
    QkvConcat,
    /// One third of a fused `qkv` along dim 0 (`part` 0, 1, 2).
    QkvSplit,
    /// `cat(q_bias, 0, v_bias)` → `qkv.bias`.
    QvBiasConcat,
    /// Drop the 3 cls rows of a relative-position table and resize it to the target window.
    ResizeRelposTable,
    /// Keep the cls row (a zero one for a table of the grid alone, timm's `no_embed_class`),
    /// drop other prefix rows, resize the position grid bicubically.
    ResizePosGrid,
    /// Patch-embedding kernel to the target patch size (bilinear, or pinv when asked).
    ResizePatchKernel,
    /// SigLIP 2: a patch-embedding Linear `(C, p·p·3)` over `(p, p, 3)`-flattened pixels →
    /// the convolution kernel `(C, 3, p, p)`, then as [`Transform::ResizePatchKernel`] (a
    /// 4-D kernel, SigLIP's, goes straight there).
    LinearPatchKernel,
    /// Uni-Perceiver: spatial table + temporal row 0 → `pos_embed` with a zero cls row.
    FoldTemporal,
    /// Prepend a zero cls row to a position table that has none.
    PadClsRow,
    /// Zeros of the target shape (a bias the source lacks: CLIP `conv1`).
    ZeroBias,
    /// Flax per-head q/k/v kernels (D, H, hd) or biases (H, hd) → fused PyTorch `qkv`.
    FlaxQkv,
    /// Flax attention out kernel (H, hd, D) → (D, H·hd).
    FlaxOut,
    /// Flax conv kernel HWIO → OIHW.
    Hwio,
}

impl Transform {
    pub fn name(self) -> &'static str {
        match self {
            Transform::Rename => "rename",
            Transform::Transpose => "transpose",
            Transform::QkvConcat => "qkv_concat",
            Transform::QkvSplit => "qkv_split",
            Transform::QvBiasConcat => "qv_bias_concat",
            Transform::ResizeRelposTable => "resize_relpos_table",
            Transform::ResizePosGrid => "resize_pos_grid",
            Transform::ResizePatchKernel => "resize_patch_kernel",
            Transform::LinearPatchKernel => "linear_patch_kernel",
            Transform::FoldTemporal => "fold_temporal",
            Transform::PadClsRow => "pad_cls_row",
            Transform::ZeroBias => "zero_bias",
            Transform::FlaxQkv => "flax_qkv",
            Transform::FlaxOut => "flax_out",
            Transform::Hwio => "hwio",
        }
    }
}

/// What a rule does when its sources are absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Upstream's init scheme for the key.
    Init,
    /// Ones (layer scale of a source without one: identity).
    Ones,
    /// Zeros.
    Zeros,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    target: String,
    #[serde(default)]
    sources: Vec<String>,
    transform: Transform,
    #[serde(default)]
    part: Option<usize>,
    #[serde(default)]
    fallback: Option<Fallback>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrop {
    source: String,
    reason: String,
    #[serde(default)]
    lossy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    family: String,
    description: String,
    #[serde(default)]
    prefix_if: Option<PrefixIf>,
    #[serde(default)]
    strip_prefix: Option<PrefixIf>,
    #[serde(default)]
    map: Vec<RawMap>,
    #[serde(default)]
    drop: Vec<RawDrop>,
}

/// Source keys stored without a prefix the rules expect (a TorchScript visual tower saved
/// on its own): when `key` is present and `prefix + key` is not, every key gets `prefix`.
/// As `strip_prefix`, the other way round: keys stored under a prefix the rules do not
/// expect (a Hugging Face `ViTForImageClassification`'s `vit.`): when `prefix + key` is
/// present and `key` is not, every key starting with `prefix` loses it (the others, such as
/// the classifier head, stay as they are).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixIf {
    pub key: String,
    pub prefix: String,
}

/// A compiled mapping rule.
#[derive(Debug, Clone)]
pub struct MapRule {
    pub target: Regex,
    pub sources: Vec<String>,
    pub transform: Transform,
    pub part: Option<usize>,
    pub fallback: Option<Fallback>,
    pub note: Option<String>,
}

/// A compiled drop rule.
#[derive(Debug, Clone)]
pub struct DropRule {
    pub source: Regex,
    pub reason: String,
    pub lossy: bool,
}

/// A family's mapping, compiled.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub family: String,
    pub description: String,
    pub prefix_if: Option<PrefixIf>,
    pub strip_prefix: Option<PrefixIf>,
    pub map: Vec<MapRule>,
    pub drop: Vec<DropRule>,
}

impl Mapping {
    /// Parse and compile a mapping file's text.
    pub fn parse(text: &str) -> Result<Mapping, ImportError> {
        let raw: RawMapping = toml::from_str(text).map_err(|e| ImportError::Mapping {
            family: "?".into(),
            reason: e.to_string(),
        })?;
        let fam = raw.family.clone();
        let re = |s: &str| {
            Regex::new(s).map_err(|e| ImportError::Mapping { family: fam.clone(), reason: format!("regex {s}: {e}") })
        };
        let mut map = Vec::new();
        for m in raw.map {
            map.push(MapRule {
                target: re(&m.target)?,
                sources: m.sources,
                transform: m.transform,
                part: m.part,
                fallback: m.fallback,
                note: m.note,
            });
        }
        let mut drop = Vec::new();
        for d in raw.drop {
            drop.push(DropRule { source: re(&d.source)?, reason: d.reason, lossy: d.lossy });
        }
        Ok(Mapping {
            family: raw.family,
            description: raw.description,
            prefix_if: raw.prefix_if,
            strip_prefix: raw.strip_prefix,
            map,
            drop,
        })
    }
}

impl Mapping {
    /// Source key names as the rules expect them (see [`PrefixIf`]).
    pub fn normalise_keys<'a>(&self, sd: Vec<(String, &'a TensorView)>) -> Vec<(String, &'a TensorView)> {
        let has = |sd: &[(String, &TensorView)], k: &str| sd.iter().any(|(n, _)| n == k);
        let mut sd = sd;
        if let Some(p) = &self.prefix_if
            && has(&sd, &p.key)
            && !has(&sd, &format!("{}{}", p.prefix, p.key))
        {
            sd = sd.into_iter().map(|(k, v)| (format!("{}{k}", p.prefix), v)).collect();
        }
        if let Some(p) = &self.strip_prefix
            && has(&sd, &format!("{}{}", p.prefix, p.key))
            && !has(&sd, &p.key)
        {
            sd = sd
                .into_iter()
                .map(|(k, v)| match k.strip_prefix(p.prefix.as_str()) {
                    Some(rest) => (rest.to_string(), v),
                    None => (k, v),
                })
                .collect();
        }
        sd
    }
}

/// Options that change how sources are transformed.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Drop what the target cannot express instead of refusing.
    pub lossy: bool,
    /// Relative-position resize: geometric instead of bicubic.
    pub relpos_geometric: bool,
    /// Patch-kernel resize: pinv instead of bilinear.
    pub patch_pinv: bool,
}

/// Where one target key's value comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "from")]
pub enum Origin {
    /// Source key(s) through a transform.
    Source {
        keys: Vec<String>,
        transform: Transform,
        #[serde(skip_serializing_if = "Option::is_none")]
        part: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Fresh, upstream's init scheme (or a rule's fallback constant).
    Fresh { init: Init, reason: String },
}

/// One planned target key.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub entry: TargetEntry,
    pub origin: Origin,
}

/// What became of one source key.
#[derive(Debug, Clone, Serialize)]
pub struct SourceFate {
    pub key: String,
    /// `used`, `dropped`, `dropped-lossy`.
    pub fate: String,
    /// Target keys it feeds, or the drop reason.
    pub detail: String,
}

/// The full plan: target keys in upstream order, source fates, lossy decisions.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub family: String,
    pub targets: Vec<Planned>,
    pub sources: Vec<SourceFate>,
    pub decisions: Vec<String>,
}

fn substitute(template: &str, caps: &regex::Captures) -> String {
    let mut out = String::new();
    caps.expand(template, &mut out);
    out
}

/// Plan every target key of `layout` from the source state dict `sd`.
pub fn plan(
    mapping: &Mapping,
    layout: &[TargetEntry],
    sd: &[(String, &TensorView)],
    opts: &PlanOptions,
) -> Result<Plan, ImportError> {
    let present: HashMap<&str, &TensorView> = sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut targets = Vec::with_capacity(layout.len());
    for entry in layout {
        let mut origin = None;
        let mut first_missing: Option<String> = None;
        let mut fallback = None;
        for rule in &mapping.map {
            let Some(caps) = rule.target.captures(&entry.name) else { continue };
            let keys: Vec<String> = rule.sources.iter().map(|s| substitute(s, &caps)).collect();
            if let Some(miss) = keys.iter().find(|k| !present.contains_key(k.as_str())) {
                first_missing.get_or_insert_with(|| miss.clone());
                if fallback.is_none() {
                    fallback = rule.fallback;
                }
                continue;
            }
            for k in &keys {
                used.entry(k.clone()).or_default().push(entry.name.clone());
            }
            origin = Some(Origin::Source {
                keys,
                transform: rule.transform,
                part: rule.part,
                note: rule.note.clone(),
            });
            break;
        }
        let origin = match (origin, first_missing, fallback) {
            (Some(o), _, _) => o,
            (None, None, _) => Origin::Fresh {
                init: entry.init.clone(),
                reason: "not in the source model: upstream init".into(),
            },
            (None, Some(miss), Some(fb)) => {
                let (init, why) = match fb {
                    Fallback::Init => (entry.init.clone(), "upstream init"),
                    Fallback::Ones => (Init::Constant { value: 1.0 }, "ones (identity)"),
                    Fallback::Zeros => (Init::Constant { value: 0.0 }, "zeros"),
                };
                Origin::Fresh { init, reason: format!("source lacks '{miss}': {why}") }
            }
            (None, Some(miss), None) => {
                return Err(ImportError::MissingSource { target: entry.name.clone(), source_key: miss });
            }
        };
        targets.push(Planned { entry: entry.clone(), origin });
    }
    let mut sources = Vec::with_capacity(sd.len());
    let mut decisions = Vec::new();
    for (key, _) in sd {
        if let Some(t) = used.get(key) {
            sources.push(SourceFate { key: key.clone(), fate: "used".into(), detail: t.join(", ") });
            continue;
        }
        let Some(d) = mapping.drop.iter().find(|d| d.source.is_match(key)) else {
            return Err(ImportError::UnusedSource { source_key: key.clone(), family: mapping.family.clone() });
        };
        if d.lossy {
            if !opts.lossy {
                return Err(ImportError::Inexpressible { source_key: key.clone(), reason: d.reason.clone() });
            }
            decisions.push(crate::meta::dropped_decision(key, &d.reason));
        }
        sources.push(SourceFate {
            key: key.clone(),
            fate: if d.lossy { "dropped-lossy".into() } else { "dropped".into() },
            detail: d.reason.clone(),
        });
    }
    Ok(Plan { family: mapping.family.clone(), targets, sources, decisions })
}

/// A produced tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// Compute one planned target key's values.
pub fn produce(
    p: &Planned,
    sd: &HashMap<&str, &TensorView>,
    opts: &PlanOptions,
    seed: u64,
) -> Result<Values, ImportError> {
    let e = &p.entry;
    let (keys, transform, part) = match &p.origin {
        Origin::Fresh { init: Init::RelPosIndex { window }, .. } => {
            return Ok(Values::I64(crate::model::vit::relative_position_index(*window)));
        }
        Origin::Fresh { init, .. } => {
            if e.dtype == crate::formats::DType::I64 {
                return Ok(Values::I64(vec![0; e.numel()]));
            }
            return Ok(Values::F32(init::fill(init, e.numel(), seed, &e.name)));
        }
        Origin::Source { keys, transform, part, .. } => (keys, *transform, *part),
    };
    let fail = |reason: String| ImportError::Transform {
        target: e.name.clone(),
        transform: transform.name().into(),
        reason,
    };
    let views: Vec<&TensorView> = keys
        .iter()
        .map(|k| sd.get(k.as_str()).copied().ok_or_else(|| fail(format!("source key {k} vanished"))))
        .collect::<Result<_, _>>()?;
    let (data, shape): (Vec<f32>, Vec<usize>) = match transform {
        Transform::Rename => {
            let v = views[0];
            if e.dtype == crate::formats::DType::I64 {
                let vals: Vec<i64> = v.to_f64().into_iter().map(|x| x as i64).collect();
                check_shape(e, keys, &v.shape)?;
                return Ok(Values::I64(vals));
            }
            (v.to_f32(), v.shape.clone())
        }
        Transform::Transpose => {
            let v = views[0];
            let [r, c] = v.shape[..] else { return Err(fail(format!("needs 2-D, got {:?}", v.shape))) };
            (tf::transpose2(&v.to_f32(), r, c), vec![c, r])
        }
        Transform::QkvConcat => {
            let mut out = Vec::new();
            let mut rows = 0;
            for v in &views {
                out.extend(v.to_f32());
                rows += v.shape.first().copied().unwrap_or(0);
            }
            let mut shape = views[0].shape.clone();
            if let Some(s) = shape.first_mut() {
                *s = rows;
            }
            (out, shape)
        }
        Transform::QkvSplit => {
            let v = views[0];
            let k = part.ok_or_else(|| fail("qkv_split needs `part`".into()))?;
            let all = v.to_f32();
            let third = all.len() / 3;
            let mut shape = v.shape.clone();
            if let Some(s) = shape.first_mut() {
                *s /= 3;
            }
            (all[k * third..(k + 1) * third].to_vec(), shape)
        }
        Transform::QvBiasConcat => {
            let (q, v) = (views[0].to_f32(), views[1].to_f32());
            let n = q.len();
            (tf::qv_bias_concat(&q, &v), vec![3 * n])
        }
        Transform::ResizeRelposTable => {
            let v = views[0];
            let heads = v.shape.get(1).copied().unwrap_or(1);
            let side = ((e.shape[0] as f64).sqrt().round() as usize).max(1);
            let window = side.div_ceil(2);
            let out = if opts.relpos_geometric {
                tf::resize_relpos_geometric(&v.to_f32(), heads, window).map_err(fail)?
            } else {
                tf::resize_relpos_bicubic(&v.to_f32(), heads, window).map_err(fail)?
            };
            (out, vec![side * side, heads])
        }
        Transform::ResizePosGrid | Transform::FoldTemporal | Transform::PadClsRow => {
            let d = *e.shape.last().unwrap_or(&0);
            let (table, prefix) = match transform {
                Transform::FoldTemporal => {
                    let (s, t) = (views[0].to_f32(), views[1].to_f32());
                    let t0 = &t[..d.min(t.len())];
                    let mut rows = vec![0.0f32; d];
                    for (i, x) in s.iter().enumerate() {
                        rows.push(x + t0[i % d]);
                    }
                    (rows, 1)
                }
                Transform::PadClsRow => {
                    let mut rows = vec![0.0f32; d];
                    rows.extend(views[0].to_f32());
                    (rows, 1)
                }
                _ => {
                    let mut t = views[0].to_f32();
                    let n = t.len() / d.max(1);
                    let mut prefix = n - square_below(n).pow(2);
                    if prefix == 0 && !is_square(e.shape[1]) {
                        // A table of the grid alone (timm's `no_embed_class`) into a layout
                        // with a cls row: a zero row, as `PadClsRow` (upstream drops it).
                        t.splice(0..0, std::iter::repeat_n(0.0, d));
                        prefix = 1;
                    }
                    (t, prefix)
                }
            };
            let n = table.len() / d.max(1);
            let g = square_below(n - prefix);
            if g * g + prefix != n {
                return Err(fail(format!("{} rows is not a square grid plus prefix rows", n)));
            }
            let keep = if is_square(e.shape[1]) { 0 } else { 1 };
            let keep = keep.min(prefix);
            let dst = square_below(e.shape[1] - keep);
            let out = tf::resize_pos_embed(&table, d, prefix, keep, (g, g), (dst, dst));
            (out, vec![1, keep + dst * dst, d])
        }
        Transform::ResizePatchKernel | Transform::LinearPatchKernel => {
            let v = views[0];
            let (kernel, shape) = if transform == Transform::LinearPatchKernel && v.shape.len() == 2 {
                let [o, n] = v.shape[..] else { return Err(fail(format!("needs 2-D, got {:?}", v.shape))) };
                let k = square_below(n / 3);
                if 3 * k * k != n {
                    return Err(fail(format!("{n} inputs are not p*p*3 pixels")));
                }
                (tf::patch_linear_to_conv(&v.to_f32(), o, k), vec![o, 3, k, k])
            } else {
                (v.to_f32(), v.shape.clone())
            };
            let [o, c, k, k2] = shape[..] else { return Err(fail(format!("needs 4-D, got {:?}", v.shape))) };
            let dst = e.shape[2];
            if k != k2 {
                return Err(fail("non-square kernel".into()));
            }
            if k == dst {
                (kernel, shape)
            } else if opts.patch_pinv {
                (tf::resize_patch_pinv(&kernel, o, c, k, dst).map_err(fail)?, vec![o, c, dst, dst])
            } else {
                (tf::resize_patch_bilinear(&kernel, o, c, k, dst), vec![o, c, dst, dst])
            }
        }
        Transform::ZeroBias => (vec![0.0; e.numel()], e.shape.clone()),
        Transform::FlaxQkv => {
            let mut out = Vec::new();
            let mut rows = 0;
            for v in &views {
                match v.shape[..] {
                    [dm, h, hd] => {
                        out.extend(tf::transpose2(&v.to_f32(), dm, h * hd));
                        rows += h * hd;
                    }
                    [h, hd] => {
                        out.extend(v.to_f32());
                        rows += h * hd;
                    }
                    _ => return Err(fail(format!("unexpected shape {:?}", v.shape))),
                }
            }
            let shape = if views[0].shape.len() == 3 { vec![rows, views[0].shape[0]] } else { vec![rows] };
            (out, shape)
        }
        Transform::FlaxOut => {
            let v = views[0];
            let [h, hd, dm] = v.shape[..] else { return Err(fail(format!("needs 3-D, got {:?}", v.shape))) };
            (tf::transpose2(&v.to_f32(), h * hd, dm), vec![dm, h * hd])
        }
        Transform::Hwio => {
            let v = views[0];
            let [h, w, i, o] = v.shape[..] else { return Err(fail(format!("needs 4-D, got {:?}", v.shape))) };
            (tf::hwio_to_oihw(&v.to_f32(), h, w, i, o), vec![o, i, h, w])
        }
    };
    check_shape(e, keys, &shape)?;
    Ok(Values::F32(data))
}

fn check_shape(e: &TargetEntry, keys: &[String], got: &[usize]) -> Result<(), ImportError> {
    if got != e.shape.as_slice() {
        return Err(ImportError::ShapeMismatch {
            target: e.name.clone(),
            sources: keys.to_vec(),
            got: got.to_vec(),
            want: e.shape.clone(),
        });
    }
    Ok(())
}

/// Whether `n` rows are a square grid alone (no prefix row).
fn is_square(n: usize) -> bool {
    square_below(n).pow(2) == n
}

/// Largest g with g² ≤ n.
pub fn square_below(n: usize) -> usize {
    let mut g = (n as f64).sqrt() as usize;
    while (g + 1) * (g + 1) <= n {
        g += 1;
    }
    while g * g > n {
        g -= 1;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_below_is_exact() {
        assert_eq!(square_below(197), 14);
        assert_eq!(square_below(196), 14);
        assert_eq!(square_below(1370), 37);
        assert_eq!(square_below(0), 0);
    }
}
