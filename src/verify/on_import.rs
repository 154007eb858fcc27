//! `verify/on_import.rs`: the checks `import` runs on the artifact it has just written,
//! before the file is renamed into place, and the compact verdict it records in the
//! artifact's `comer_port.verify` metadata. The same checks as `comer-port verify ARTIFACT
//! --source SOURCE` (see `artifact.rs`): the written file re-read by two readers, mapping
//! parity against the source, and the full backbone on a seeded image at `img_size`.
//! Upstream has no equivalent: its loaders check nothing at load time.

use std::path::Path;

use super::artifact;
use super::compare::{Check, Report};
use crate::formats::{Checkpoint, DType};
use crate::model::ComerConfig;

/// Parity bound of an artifact stored in float16: each weight is rounded to 11 significant
/// bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4); through a few blocks that stays well inside 1e-2.
pub const F16_BOUND: f64 = 1e-2;
/// Parity bound of an artifact stored in bfloat16 (8 significant bits, ≤ 2⁻⁸ ≈ 3.9e-3 each).
pub const BF16_BOUND: f64 = 5e-2;

/// What makes an import approximate on purpose, and so changes how parity is judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Approximation {
    /// Stored in a narrower float type: parity is held to the stated bound for that type.
    Dtype { name: &'static str, bound: f64 },
    /// `--lossy` dropped what the target cannot express: no bound can be stated, so a parity
    /// check beyond the exact bound is reported as skipped, with its measured figures.
    Lossy { dropped: Vec<String> },
}

/// The approximations an artifact declares: its float dtype, and the `lossy` flag and
/// decisions of its `comer_port.transforms` metadata (written by `import`). Used by `import`
/// before writing and by `verify` on a file, so both judge parity the same way.
pub fn approximations(transforms_json: Option<&str>, float_dtype: DType) -> Vec<Approximation> {
    let mut v = Vec::new();
    match float_dtype {
        DType::F16 => v.push(Approximation::Dtype { name: "f16", bound: F16_BOUND }),
        DType::BF16 => v.push(Approximation::Dtype { name: "bf16", bound: BF16_BOUND }),
        _ => {}
    }
    let t: serde_json::Value = transforms_json.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
    if t["lossy"] == serde_json::Value::Bool(true) {
        // "dropped 'KEY' (--lossy): why" -> KEY; other decisions verbatim.
        let dropped: Vec<String> = t["decisions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str())
                    .map(|d| match d.strip_prefix("dropped '").and_then(|r| r.split_once('\'')) {
                        Some((key, _)) => key.to_string(),
                        None => d.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !dropped.is_empty() {
            v.push(Approximation::Lossy { dropped });
        }
    }
    v
}

/// The float dtype of an artifact: that of its first floating-point tensor.
pub fn float_dtype(ck: &Checkpoint) -> DType {
    ck.tensors()
        .iter()
        .map(|(_, t)| t.dtype)
        .find(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16 | DType::F64))
        .unwrap_or(DType::F32)
}

/// Judge the mapping-parity checks of `report` under the import's approximations.
pub fn apply_approximations(report: &mut Report, approx: &[Approximation]) {
    for c in report.checks.iter_mut().filter(|c| c.name.starts_with("mapping parity") && c.skipped.is_none()) {
        for a in approx {
            match a {
                Approximation::Dtype { name, bound } => {
                    if *bound > c.bound {
                        c.bound = *bound;
                        c.passed = c.figures.max_rel.is_finite() && c.figures.max_rel <= *bound;
                        if c.passed {
                            c.figures.first_parted = None;
                            c.first_parted_at = None;
                        }
                        c.note = Some(format!("approximate: weights stored as {name}, bound {bound:e}"));
                    }
                }
                Approximation::Lossy { dropped } if !c.passed => {
                    c.skipped = Some(format!(
                        "lossy import (dropped: {}): measured max rel {:.3e}, cosine {:.6}; no bound can be stated",
                        dropped.join("; "),
                        c.figures.max_rel,
                        c.figures.cosine
                    ));
                }
                Approximation::Lossy { .. } => {}
            }
        }
    }
}

/// Room reserved in the safetensors header for the verdict (see [`compact_verdict`]).
pub const VERDICT_ROOM: usize = 2048;

/// Run `verify`'s checks ([`artifact::artifact_report`]) on `artifact_path`, a written
/// safetensors file still under its temporary name; checks are named after `dest`, the name
/// it will have, so the recorded verdict does not depend on the temporary name. A check
/// sequence that cannot run is a failed check naming why, never a panic.
pub fn import_checks(source: &Checkpoint, artifact_path: &Path, dest: &Path, cfg: &ComerConfig, seed: u64) -> Report {
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (tmp_name, dest_name) = (file_name(artifact_path), file_name(dest));
    match artifact::artifact_report(artifact_path, Some(source), None, cfg, seed) {
        Ok(mut report) => {
            if !tmp_name.is_empty() {
                report.checks.iter_mut().for_each(|c| c.name = c.name.replace(&tmp_name, &dest_name));
            }
            report
        }
        Err(e) => Report { checks: vec![Check::outcome("verify", &[1], 1, Some(0), Some(e.to_string()))] },
    }
}

/// The metadata value `import` writes before verifying: [`VERDICT_ROOM`] bytes, replaced by
/// [`header_verdict`] once the checks ran.
pub fn verdict_placeholder() -> String {
    format!("pending{}", "~".repeat(VERDICT_ROOM - "pending".len()))
}

/// The verdict as it sits inside the header's JSON string: escaped, at most [`VERDICT_ROOM`]
/// bytes once escaped (the per-check list is shortened until it fits).
pub fn header_verdict(report: &Report) -> String {
    let mut room = VERDICT_ROOM;
    loop {
        let escaped = serde_json::Value::String(compact_verdict(report, room)).to_string();
        let inner = &escaped[1..escaped.len() - 1];
        if inner.len() <= VERDICT_ROOM || room < 64 {
            return inner.to_string();
        }
        room -= 256;
    }
}

/// The verdict as one JSON object of at most `room` bytes: `passed`, counts, the first
/// failure, and per check its name, status and worst relative error. When the per-check
/// list does not fit, it is dropped and `checks_omitted` says how many there were.
pub fn compact_verdict(report: &Report, room: usize) -> String {
    let verdict = if report.first_failure().is_some() {
        "failed"
    } else if report.passed() {
        "passed"
    } else {
        "nothing ran"
    };
    let checks: Vec<serde_json::Value> = report
        .checks
        .iter()
        .map(|c| {
            let status = match (&c.skipped, c.passed) {
                (Some(_), _) => "skipped",
                (None, true) => "ok",
                (None, false) => "failed",
            };
            serde_json::json!({ "name": c.name, "status": status, "max_rel": c.figures.max_rel, "bound": c.bound })
        })
        .collect();
    let mut v = serde_json::json!({
        "verdict": verdict,
        "ran": report.checks.len() - report.skipped(),
        "skipped": report.skipped(),
        "first_failure": report.first_failure().map(|c| match &c.note {
            Some(n) => format!("{} ({n})", c.name),
            None => c.name.clone(),
        }),
        "checks": checks,
    });
    let text = v.to_string();
    if text.len() <= room {
        return text;
    }
    let n = report.checks.len();
    if let Some(o) = v.as_object_mut() {
        o.remove("checks");
        o.insert("checks_omitted".into(), n.into());
    }
    let mut text = v.to_string();
    if text.len() > room {
        // Only a pathological first-failure note can get here; keep the verdict.
        text = serde_json::json!({ "verdict": verdict, "checks_omitted": n }).to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximations_are_read_from_the_transforms_metadata() {
        let t = r#"{"lossy":true,"decisions":["dropped 'visual.ln_pre.weight' (--lossy): no place","kept x"]}"#;
        let a = approximations(Some(t), DType::F16);
        assert_eq!(a[0], Approximation::Dtype { name: "f16", bound: F16_BOUND });
        assert_eq!(a[1], Approximation::Lossy { dropped: vec!["visual.ln_pre.weight".into(), "kept x".into()] });
        assert!(approximations(Some(r#"{"lossy":false,"decisions":[]}"#), DType::F32).is_empty());
        assert!(approximations(None, DType::F32).is_empty());
    }

    #[test]
    fn approximations_restate_parity() {
        let mut r = Report::default();
        r.push(Check::new("mapping parity image64x64 (deit)", &[2], &[1.0, 2.003], &[1.0, 2.0], 1e-5));
        r.push(Check::new("backbone f1", &[1], &[1.0], &[1.0], 0.0));
        let mut f16 = r.clone();
        apply_approximations(&mut f16, &[Approximation::Dtype { name: "f16", bound: F16_BOUND }]);
        assert!(f16.passed(), "1.5e-3 is inside the f16 bound");
        assert_eq!(f16.checks[0].bound, F16_BOUND);
        let mut lossy = r.clone();
        apply_approximations(&mut lossy, &[Approximation::Lossy { dropped: vec!["ln_pre".into()] }]);
        let why = lossy.checks[0].skipped.clone().unwrap_or_default();
        assert!(why.contains("ln_pre") && why.contains("1.500e-3"), "{why}");
        assert!(lossy.passed(), "skipped, not failed");
        assert!(!r.passed(), "unchanged without approximations");
    }

    #[test]
    fn verdict_fits_its_room_and_names_the_failure() {
        let mut r = Report::default();
        r.push(Check::new("parity 64x64", &[2], &[1.0, 2.0], &[1.0, 2.0], 1e-5));
        r.push(Check::skipped("golden", "no folder"));
        let v: serde_json::Value = serde_json::from_str(&compact_verdict(&r, VERDICT_ROOM)).expect("json");
        assert_eq!(v["verdict"], "passed");
        assert_eq!(v["skipped"], 1);
        r.push(Check::outcome("backbone load", &[1], 1, Some(0), Some("missing key x".into())));
        for i in 0..200 {
            r.push(Check::new(format!("a rather long check name number {i}"), &[1], &[1.0], &[1.0], 1e-5));
        }
        let text = compact_verdict(&r, VERDICT_ROOM);
        assert!(text.len() <= VERDICT_ROOM);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["verdict"], "failed");
        assert_eq!(v["checks_omitted"], 203);
        assert!(v["first_failure"].as_str().unwrap_or("").contains("missing key x"));
    }
}
