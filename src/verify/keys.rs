//! `verify/keys.rs`: the artifact's key set against upstream's exact `state_dict()` layout.
//!
//! The check `load_state_dict(strict=True)` makes in upstream's `ViTCoMer` / `BEiTComer2`
//! (`torch/nn/modules/module.py` `_load_from_state_dict`: missing keys, unexpected keys, size
//! mismatches), against `model::layout::target_layout` for the artifact's config, reported the
//! way burn-store's `apply_result.rs` does: every missing key with a "did you mean" hint among
//! the unexpected ones and the reverse, and shape mismatches with a hint when the stored shape
//! is the expected one reversed (a transposed tensor). A renamed or transposed tensor is a
//! failed check naming the keys, never an error exit.

use super::compare::Check;
use crate::formats::DType;
use crate::model::ComerConfig;
use crate::model::error::near_miss;
use crate::model::layout::target_layout;

/// How many problems the note lists before summarising the rest.
const MAX_LISTED: usize = 6;

/// One key of the artifact: name, shape, dtype.
pub type ArtifactKey = (String, Vec<usize>, DType);

/// Check `artifact` (every tensor's name, shape and dtype) against the layout of `cfg`.
/// Integer buffers (`relative_position_index`, `num_batches_tracked`) may be absent as a whole
/// (`import --no-buffers`); any other absence, any extra key and any shape difference fails,
/// and the check's element index is the first offending layout row.
pub fn layout_check(artifact: &[ArtifactKey], cfg: &ComerConfig) -> Check {
    const NAME: &str = "target keys";
    let layout = target_layout(cfg);
    let n = layout.len();
    let have: std::collections::BTreeMap<&str, &ArtifactKey> =
        artifact.iter().map(|k| (k.0.as_str(), k)).collect();
    let known: std::collections::BTreeSet<&str> = layout.iter().map(|e| e.name.as_str()).collect();
    let unexpected: Vec<String> =
        artifact.iter().filter(|k| !known.contains(k.0.as_str())).map(|k| k.0.clone()).collect();
    let missing: Vec<String> = layout
        .iter()
        .filter(|e| e.dtype != DType::I64 && !have.contains_key(e.name.as_str()))
        .map(|e| e.name.clone())
        .collect();
    let buffers_absent = layout
        .iter()
        .filter(|e| e.dtype == DType::I64 && !have.contains_key(e.name.as_str()))
        .count();
    let buffers_total = layout.iter().filter(|e| e.dtype == DType::I64).count();

    let mut problems = Vec::new();
    let mut first_bad: Option<usize> = None;
    let mut mark = |i: usize| first_bad = Some(first_bad.map_or(i, |f: usize| f.min(i)));
    for (i, e) in layout.iter().enumerate() {
        match have.get(e.name.as_str()) {
            None if e.dtype == DType::I64 => {
                // A partial set of buffers is not what `--no-buffers` writes.
                if buffers_absent != buffers_total {
                    mark(i);
                    problems.push(format!("missing buffer `{}`", e.name));
                }
            }
            None => {
                mark(i);
                problems.push(match near_miss(&e.name, &unexpected) {
                    Some(h) => format!("missing `{}` (did you mean `{h}`?)", e.name),
                    None => format!("missing `{}`", e.name),
                });
            }
            Some((_, shape, _)) if shape != &e.shape => {
                mark(i);
                let reversed: Vec<usize> = e.shape.iter().rev().copied().collect();
                let hint = if shape.len() > 1 && *shape == reversed { " (transposed?)" } else { "" };
                problems.push(format!("`{}` has shape {shape:?}, upstream's layout {:?}{hint}", e.name, e.shape));
            }
            Some(_) => {}
        }
    }
    for k in &unexpected {
        mark(n.saturating_sub(1));
        problems.push(match near_miss(k, &missing) {
            Some(h) => format!("unexpected `{k}` (did you mean `{h}`?)"),
            None => format!("unexpected `{k}`"),
        });
    }
    let note = if problems.is_empty() {
        let buffers = if buffers_absent > 0 && buffers_absent == buffers_total {
            format!(", {buffers_absent} integer buffers absent (--no-buffers)")
        } else {
            String::new()
        };
        format!("{} keys with upstream's names and shapes{buffers}", n - buffers_absent)
    } else {
        let more = problems.len().saturating_sub(MAX_LISTED);
        let mut s = problems.into_iter().take(MAX_LISTED).collect::<Vec<_>>().join("; ");
        if more > 0 {
            s.push_str(&format!("; and {more} more"));
        }
        s
    };
    Check::outcome(NAME, &[n], n, first_bad, Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::target_layout;

    fn tiny() -> ComerConfig {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/forward/det_tiny/case.json"),
        )
        .expect("case.json");
        ComerConfig::from_case_json(&text).expect("config")
    }

    fn keys(cfg: &ComerConfig) -> Vec<ArtifactKey> {
        target_layout(cfg).into_iter().map(|e| (e.name, e.shape, e.dtype)).collect()
    }

    #[test]
    fn exact_layout_passes() {
        let cfg = tiny();
        let c = layout_check(&keys(&cfg), &cfg);
        assert!(c.passed, "{c:?}");
    }

    #[test]
    fn renamed_key_names_both_sides() {
        let cfg = tiny();
        let mut k = keys(&cfg);
        let row = k.iter_mut().find(|k| k.0 == "blocks.1.attn.qkv.weight").expect("key");
        row.0 = "blocks.1.attn.qkv.weights".into();
        let c = layout_check(&k, &cfg);
        assert!(!c.passed);
        let note = c.note.unwrap_or_default();
        assert!(note.contains("missing `blocks.1.attn.qkv.weight` (did you mean `blocks.1.attn.qkv.weights`?)"), "{note}");
        assert!(note.contains("unexpected `blocks.1.attn.qkv.weights`"), "{note}");
    }

    #[test]
    fn transposed_tensor_is_named() {
        let cfg = tiny();
        let mut k = keys(&cfg);
        let row = k.iter_mut().find(|k| k.0 == "blocks.2.attn.qkv.weight").expect("key");
        row.1.reverse();
        let c = layout_check(&k, &cfg);
        assert!(!c.passed);
        assert!(c.note.unwrap_or_default().contains("`blocks.2.attn.qkv.weight` has shape [48, 144], upstream's layout [144, 48] (transposed?)"));
    }
}
