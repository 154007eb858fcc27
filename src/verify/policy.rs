//! `verify/policy.rs`: how checks are judged, in one place. The bounds every runner holds
//! its figures to, the bound a family's declared [`Fit`] earns, the approximations an
//! artifact was made with (narrow float dtypes, `--lossy`) and how they restate mapping
//! parity, and the compact verdict `import` records in the artifact. Runners
//! (`parity.rs`, `artifact.rs`, `golden.rs`) use these; none of them parses what another
//! module wrote. Upstream has no equivalent: its loaders check nothing at load time.

use super::compare::{LOSSY_SKIP, Report};
use crate::families::{Fit, TARGET_EPS};
use crate::formats::DType;

/// Relative bound for exact mappings (renames, splits, transposes).
pub const EXACT_BOUND: f64 = 1e-5;
/// Bound of a documented approximate mapping: a LayerNorm eps change (HF 1e-12, CLIP and
/// Uni-Perceiver 1e-5 against upstream's 1e-6).
pub const EPS_CHANGE_BOUND: f64 = 1e-4;
/// Bound of the golden comparison: `1e-4 · max(1, max|expected|)`.
pub const GOLDEN_BOUND: f64 = 1e-4;
/// Parity bound of an artifact stored in float16: each weight is rounded to 11 significant
/// bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4); through a few blocks that stays well inside 1e-2.
pub const F16_BOUND: f64 = 1e-2;
/// Parity bound of an artifact stored in bfloat16 (8 significant bits, ≤ 2⁻⁸ ≈ 3.9e-3 each).
pub const BF16_BOUND: f64 = 5e-2;

/// The image side the full backbone is checked at: `img_size` when it is a multiple of 32
/// (the pyramid's coarsest stride, which upstream's forward needs), else the multiple of 32
/// below it (the DINOv2 presets' 592 = 37·16 runs at 576).
pub fn backbone_size(img_size: usize) -> usize {
    if img_size.is_multiple_of(32) { img_size } else { (img_size / 32).max(1) * 32 }
}

/// The bound a check under `fit` is held to, and the note that explains an approximate one.
/// An inexpressible fit is measured at the exact bound and reported as skipped by the runner.
pub fn fit_bound(fit: &Fit) -> (f64, Option<String>) {
    match fit {
        Fit::Exact | Fit::Inexpressible(_) => (EXACT_BOUND, None),
        Fit::EpsChange { from } => (
            EPS_CHANGE_BOUND,
            Some(format!("approximate: LayerNorm eps {from:e} -> {TARGET_EPS:e}, bound {EPS_CHANGE_BOUND:e}")),
        ),
        Fit::Approximation { what, bound } => (*bound, Some(format!("approximate: {what}, bound {bound:e}"))),
    }
}

/// What makes an import approximate on purpose, and so changes how parity is judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Approximation {
    /// Stored in a narrower float type: parity is held to the stated bound for that type.
    Dtype {
        /// `f16` or `bf16`.
        name: &'static str,
        /// The bound.
        bound: f64,
    },
    /// `--lossy` dropped what the target cannot express: no bound can be stated, so a parity
    /// check beyond the exact bound is reported as skipped, with its measured figures.
    Lossy {
        /// The dropped source keys.
        dropped: Vec<String>,
    },
}

/// The approximations an artifact was made with: its float dtype (when every floating tensor
/// has it), and the source keys the mapping drops only under `--lossy` — re-derived from the
/// source and the mapping by the caller, never read from the artifact's own metadata. Used on
/// the file `import` has just written and by `verify` on any file, so both judge alike.
pub fn approximations(dropped_lossy: &[String], float_dtype: DType) -> Vec<Approximation> {
    let mut v = Vec::new();
    match float_dtype {
        DType::F16 => v.push(Approximation::Dtype { name: "f16", bound: F16_BOUND }),
        DType::BF16 => v.push(Approximation::Dtype { name: "bf16", bound: BF16_BOUND }),
        _ => {}
    }
    if !dropped_lossy.is_empty() {
        v.push(Approximation::Lossy { dropped: dropped_lossy.to_vec() });
    }
    v
}

/// Judge the mapping-parity checks of `report` under the import's approximations: a narrow
/// dtype earns its bound; what `--lossy` dropped makes every parity comparison that does not
/// hold exactly (failed, or skipped as inexpressible with figures) a *lossy* one, with its
/// measured deviation — the artifact computes another function, and the verdict says so.
pub fn apply_approximations(report: &mut Report, approx: &[Approximation]) {
    for c in report.checks.iter_mut().filter(|c| c.name.starts_with("mapping parity")) {
        for a in approx {
            match a {
                Approximation::Dtype { name, bound } if c.skipped.is_none() => {
                    if *bound > c.bound {
                        c.bound = *bound;
                        c.passed = c.figures.max_rel.is_finite() && c.figures.max_rel <= *bound;
                        if c.passed {
                            c.figures.first_parted = None;
                            c.first_parted_at = None;
                        }
                        c.note = Some(format!("approximate: weights stored as {name}, bound {bound:e}"));
                        c.approximation = Some(match c.approximation.take() {
                            Some(a) => format!("{a}; weights stored as {name}"),
                            None => format!("weights stored as {name}"),
                        });
                    }
                }
                Approximation::Dtype { .. } => {}
                Approximation::Lossy { dropped } => {
                    let compared = c.figures.numel > 1;
                    if compared && (c.skipped.is_some() || !c.passed) {
                        let was = c.skipped.take().map(|r| format!("; {r}")).unwrap_or_default();
                        c.skipped = Some(format!(
                            "{LOSSY_SKIP} (dropped: {}): measured max rel {:.3e}, cosine {:.6}; no bound can be stated{was}",
                            dropped.join("; "),
                            c.figures.max_rel,
                            c.figures.cosine
                        ));
                    }
                }
            }
        }
    }
}

/// The verdict of a report in one word: `failed`, `lossy` (nothing failed, and what
/// `--lossy` dropped was measured), `passed`, or `nothing ran`.
pub fn verdict(report: &Report) -> &'static str {
    report.verdict().name()
}

/// Room reserved in the safetensors header for the verdict (see [`compact_verdict`]).
pub const VERDICT_ROOM: usize = 2048;

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
    let verdict = verdict(report);
    let checks: Vec<serde_json::Value> = report
        .checks
        .iter()
        .map(|c| {
            let status = super::compare::status(c).to_lowercase();
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

/// The recorded verdict of an import that did not verify, and why.
pub fn not_run_verdict(why: &str) -> String {
    serde_json::json!({ "verdict": "not run", "why": why }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Check;

    #[test]
    fn approximations_follow_the_dtype_and_the_dropped_keys() {
        let a = approximations(&["visual.ln_pre.weight".to_string()], DType::F16);
        assert_eq!(a[0], Approximation::Dtype { name: "f16", bound: F16_BOUND });
        assert_eq!(a[1], Approximation::Lossy { dropped: vec!["visual.ln_pre.weight".into()] });
        assert!(approximations(&[], DType::F32).is_empty());
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
    fn backbone_sizes_are_multiples_of_32() {
        assert_eq!(backbone_size(512), 512);
        assert_eq!(backbone_size(592), 576);
        assert_eq!(backbone_size(20), 32);
    }

    #[test]
    fn fits_earn_their_bounds() {
        assert_eq!(fit_bound(&Fit::Exact).0, EXACT_BOUND);
        assert_eq!(fit_bound(&Fit::EpsChange { from: 1e-12 }).0, EPS_CHANGE_BOUND);
        let (b, note) = fit_bound(&Fit::Approximation { what: "tanh GELU".into(), bound: 1e-2 });
        assert_eq!(b, 1e-2);
        assert!(note.unwrap_or_default().contains("tanh GELU"));
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
