//! `verify/compare.rs`: compare two tensors and collect the figures into a [`Report`].
//!
//! The error measures follow what the parity acceptance states: max absolute error, max
//! relative error normalised by `max(1, max|expected|)` (the bound every golden test uses),
//! cosine similarity, and the first element where the two sides part. A [`Report`] renders a
//! readable table and serialises to JSON for `comer-port verify --json`.

use crate::text::{Escaped, escape};
use serde::Serialize;

use super::error::VerifyError;

/// Figures of one comparison of `got` against `expected` (same number of elements).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Elements compared.
    pub numel: usize,
    /// `max |got - expected|`.
    pub max_abs: f64,
    /// `max_abs / max(1, max |expected|)`.
    pub max_rel: f64,
    /// Cosine similarity of the flattened tensors (1 when both are all zeros).
    pub cosine: f64,
    /// First flat index where `|got - expected| > bound * max(1, max|expected|)`, or where
    /// either side is not finite; `None` when they agree everywhere.
    pub first_parted: Option<usize>,
}

/// Compare flat element lists against a relative `bound`. A length mismatch parts at the
/// first index past the shorter side.
pub fn compare(got: &[f32], expected: &[f32], bound: f64) -> Comparison {
    let n = got.len().min(expected.len());
    let scale = expected
        .iter()
        .fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
    let tol = bound * scale;
    let (mut max_abs, mut dot, mut gg, mut ee) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut first_parted = None;
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let (g, e) = (f64::from(*g), f64::from(*e));
        let d = (g - e).abs();
        let bad = !d.is_finite() || d > tol;
        if bad && first_parted.is_none() {
            first_parted = Some(i);
        }
        max_abs = if d.is_finite() {
            max_abs.max(d)
        } else {
            f64::INFINITY
        };
        dot += g * e;
        gg += g * g;
        ee += e * e;
    }
    if got.len() != expected.len() && first_parted.is_none() {
        first_parted = Some(n);
    }
    let cosine = if gg == 0.0 && ee == 0.0 {
        1.0
    } else {
        dot / (gg.sqrt() * ee.sqrt()).max(f64::MIN_POSITIVE)
    };
    Comparison {
        numel: n,
        max_abs,
        max_rel: max_abs / scale,
        cosine,
        first_parted,
    }
}

/// Row-major multi-index of flat index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (slot, &d) in idx.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = i % d;
            i /= d;
        }
    }
    idx
}

/// Words that open the skip reason of a parity check judged under `--lossy`
/// (`policy::apply_approximations` writes it).
pub const LOSSY_SKIP: &str = "lossy import";

/// One named check with its stated bound and verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was compared, e.g. `mapping parity 64x64` or a target key.
    pub name: String,
    /// The relative bound the check is held to.
    pub bound: f64,
    /// Shape of what was compared.
    pub shape: Vec<usize>,
    /// Its figures (flattened into the check's JSON).
    #[serde(flatten)]
    pub figures: Comparison,
    /// Multi-index of `figures.first_parted` in `shape`.
    pub first_parted_at: Option<Vec<usize>>,
    /// Where the sides part beyond the element (e.g. the first block), when known.
    pub note: Option<String>,
    /// Whether it stayed within the bound (false for a skipped check).
    pub passed: bool,
    /// Why the check could not run (then `passed` is false but the run does not fail on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Whether two sides were compared (the figures mean something); false for checks
    /// without a second side (finiteness, key sets), whose figures are not shown.
    pub compared: bool,
    /// The declared approximation the bound stands for (a LayerNorm eps change, a narrow
    /// dtype, a family's stated approximation), when the check is not held to exactness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximation: Option<String>,
}

/// What a check's row says: `exact`, `approximation` (within the bound its declared
/// approximation earns), `ok` (a check without a second side that held), `skipped`, `FAILED`.
pub fn status(c: &Check) -> &'static str {
    match (&c.skipped, c.passed, c.compared, &c.approximation) {
        (Some(_), ..) => "skipped",
        (None, false, ..) => "FAILED",
        (None, true, true, Some(_)) => "approximation",
        (None, true, true, None) => "exact",
        (None, true, false, _) => "ok",
    }
}

/// The overall verdict of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check ran and held exactly (or, without a second side, held).
    Passed,
    /// Every check held; some only within the bound of a declared approximation.
    PassedWithApproximations,
    /// Parts were dropped on request (`--lossy`): the artifact computes another function.
    Lossy,
    /// A check failed.
    Failed,
    /// No check ran.
    NothingRan,
}

impl Verdict {
    /// The verdict in words, as the table and the recorded metadata print it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::PassedWithApproximations => "passed with approximations",
            Verdict::Lossy => "lossy",
            Verdict::Failed => "failed",
            Verdict::NothingRan => "nothing ran",
        }
    }
}

impl Check {
    /// Compare `got` with `expected` (of `shape`) against `bound`.
    pub fn new(
        name: impl Into<String>,
        shape: &[usize],
        got: &[f32],
        expected: &[f32],
        bound: f64,
    ) -> Check {
        let figures = compare(got, expected, bound);
        let passed = figures.first_parted.is_none() && figures.max_rel <= bound;
        Check {
            name: name.into(),
            bound,
            shape: shape.to_vec(),
            first_parted_at: figures.first_parted.map(|i| unravel(i, shape)),
            figures,
            note: None,
            passed,
            skipped: None,
            compared: true,
            approximation: None,
        }
    }

    /// A check that could not run, with the reason: reported, never counted as passed.
    pub fn skipped(name: impl Into<String>, reason: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            bound: 0.0,
            shape: Vec::new(),
            figures: Comparison {
                numel: 0,
                max_abs: 0.0,
                max_rel: 0.0,
                cosine: 1.0,
                first_parted: None,
            },
            first_parted_at: None,
            note: None,
            passed: false,
            skipped: Some(reason.into()),
            compared: false,
            approximation: None,
        }
    }

    /// This check's figures kept, but reported as skipped with `reason`: for comparisons
    /// that have no stated bound (what the target layout cannot express). The run neither
    /// passes nor fails on it, and the figures say how far the two sides are apart.
    pub fn into_skipped(mut self, reason: impl Into<String>) -> Check {
        self.bound = 0.0;
        self.passed = false;
        self.figures.first_parted = None;
        self.first_parted_at = None;
        self.skipped = Some(reason.into());
        self
    }

    /// A check without a second side: `numel` items (tensors, elements) of `shape`, of which
    /// `first_bad` is the first that fails (with `note` saying why); passed when none does.
    pub fn outcome(
        name: impl Into<String>,
        shape: &[usize],
        numel: usize,
        first_bad: Option<usize>,
        note: Option<String>,
    ) -> Check {
        Check {
            name: name.into(),
            bound: 0.0,
            shape: shape.to_vec(),
            figures: Comparison {
                numel,
                max_abs: 0.0,
                max_rel: 0.0,
                cosine: 1.0,
                first_parted: first_bad,
            },
            first_parted_at: first_bad.map(|i| unravel(i, shape)),
            note,
            passed: first_bad.is_none(),
            skipped: None,
            compared: false,
            approximation: None,
        }
    }
}

/// The checks of one verify run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Every check, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    /// Add a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True when every check that ran passed (and at least one ran); skipped checks are
    /// reported but neither pass nor fail the run.
    pub fn passed(&self) -> bool {
        let mut ran = self.checks.iter().filter(|c| c.skipped.is_none()).peekable();
        ran.peek().is_some() && ran.all(|c| c.passed)
    }

    /// The first failing check (skipped ones aside), if any.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| !c.passed && c.skipped.is_none())
    }

    /// Whether the figures stand for another function than the source's: a parity check was
    /// skipped because `--lossy` dropped part of the source (verdict *lossy*, never *passed*).
    pub fn is_lossy(&self) -> bool {
        self.checks.iter().any(|c| c.skipped.as_deref().is_some_and(|s| s.starts_with(LOSSY_SKIP)))
    }

    /// The overall verdict: failed when a check failed, lossy when `--lossy` dropped parts,
    /// passed with approximations when a check held only within a declared approximation's
    /// bound, passed when every check that ran held, nothing ran otherwise.
    pub fn verdict(&self) -> Verdict {
        if self.first_failure().is_some() {
            Verdict::Failed
        } else if !self.passed() {
            Verdict::NothingRan
        } else if self.is_lossy() {
            Verdict::Lossy
        } else if self.checks.iter().any(|c| c.skipped.is_none() && c.approximation.is_some()) {
            Verdict::PassedWithApproximations
        } else {
            Verdict::Passed
        }
    }

    /// Each approximation a passing check held under, with its measured figure and bound.
    pub fn approximations(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.skipped.is_none() && c.passed)
            .filter_map(|c| {
                c.approximation.as_ref().map(|a| {
                    format!("{}: {a}, measured max rel {:.3e} within {:.1e}", c.name, c.figures.max_rel, c.bound)
                })
            })
            .collect()
    }

    /// How many checks were skipped.
    pub fn skipped(&self) -> usize {
        self.checks.iter().filter(|c| c.skipped.is_some()).count()
    }

    /// `Ok` when no check failed; otherwise [`VerifyError::Parted`] naming the first failing
    /// check (with its note, e.g. the first block where the sides part) and element index.
    pub fn ensure_passed(&self) -> Result<(), VerifyError> {
        let Some(c) = self.first_failure() else { return Ok(()) };
        let key = match &c.note {
            Some(note) => format!("{} ({note})", c.name),
            None => c.name.clone(),
        };
        let rest: Vec<&str> = self
            .checks
            .iter()
            .filter(|o| !o.passed && o.skipped.is_none() && !std::ptr::eq(*o, c))
            .map(|o| o.name.as_str())
            .collect();
        let also = if rest.is_empty() { String::new() } else { format!("; also failed: {}", rest.join(", ")) };
        // A check without a second side has no figures to quote.
        if !c.compared {
            return Err(VerifyError::Failed { key, also });
        }
        Err(VerifyError::Parted {
            key,
            index: c.first_parted_at.clone().unwrap_or_default(),
            max_rel: c.figures.max_rel,
            bound: c.bound,
            also,
        })
    }

    /// JSON with the checks and the overall verdict.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verdict": self.verdict().name(),
            "passed": self.passed(),
            "skipped": self.skipped(),
            "checks": self.checks,
        })
    }

    /// A fixed-width table, one line per check, and a verdict line. Check names, skip reasons
    /// and notes name keys and files from the artifact: they are escaped (`text::Escaped`), so
    /// a key cannot clear the screen or print a line of its own.
    pub fn render_table(&self) -> String {
        let names: Vec<String> = self.checks.iter().map(|c| escape(&c.name).into_owned()).collect();
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(5).max(5);
        let mut out = format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>9}  {:>8}  result\n",
            "check", "max abs", "max rel", "cosine", "bound", "parts at"
        );
        for (c, name) in self.checks.iter().zip(&names) {
            let at = c
                .first_parted_at
                .as_ref()
                .map(|i| format!("{i:?}"))
                .unwrap_or_else(|| "-".into());
            // Only the figures the check computed: a check without a second side has none.
            let (abs, rel, cos, bound) = if c.compared {
                (
                    format!("{:.3e}", c.figures.max_abs),
                    format!("{:.3e}", c.figures.max_rel),
                    format!("{:.7}", c.figures.cosine),
                    if c.skipped.is_some() { "-".to_string() } else { format!("{:.1e}", c.bound) },
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            out.push_str(&format!(
                "{:<width$}  {abs:>10}  {rel:>10}  {cos:>10}  {bound:>9}  {at:>8}  {}\n",
                name,
                status(c),
            ));
            if let Some(reason) = &c.skipped {
                out.push_str(&format!("    skipped: {}\n", Escaped(reason)));
            }
            if let Some(note) = &c.note {
                out.push_str(&format!("    {}\n", Escaped(note)));
            }
        }
        let skipped = match self.skipped() {
            0 => String::new(),
            n => format!(" ({n} skipped)"),
        };
        out.push_str(&match self.verdict() {
            Verdict::Lossy => format!(
                "verdict: lossy{skipped}: the artifact computes another function than the source (see the skipped parity figures)\n"
            ),
            Verdict::Passed => format!("verdict: passed{skipped}\n"),
            Verdict::PassedWithApproximations => {
                let mut v = format!("verdict: passed with approximations{skipped}\n");
                for a in self.approximations() {
                    v.push_str(&format!("    {a}\n"));
                }
                v
            }
            Verdict::Failed | Verdict::NothingRan => format!("verdict: FAILED{skipped}\n"),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_tensors_agree() {
        let a = [1.0f32, -2.0, 3.0];
        let c = compare(&a, &a, 1e-5);
        assert_eq!(c.max_abs, 0.0);
        assert_eq!(c.first_parted, None);
        assert!((c.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn relative_error_uses_max_one_or_max_expected() {
        let c = compare(&[0.1, 0.2], &[0.0, 0.0], 1.0);
        assert!((c.max_rel - 0.2).abs() < 1e-7); // scale 1
        let c = compare(&[4.0, 0.0], &[4.0, 1.0], 1.0);
        assert!((c.max_rel - 0.25).abs() < 1e-12); // scale 4
    }

    #[test]
    fn first_parted_index_and_unravel() {
        let exp = vec![0.0f32; 12];
        let mut got = exp.clone();
        got[7] = 1e-3;
        got[9] = 1.0;
        let c = compare(&got, &exp, 1e-5);
        assert_eq!(c.first_parted, Some(7));
        assert_eq!(unravel(7, &[1, 3, 4]), vec![0, 1, 3]);
    }

    #[test]
    fn nan_parts_and_length_mismatch_parts() {
        let c = compare(&[0.0, f32::NAN], &[0.0, 0.0], 1e-5);
        assert_eq!(c.first_parted, Some(1));
        let c = compare(&[0.0], &[0.0, 0.0], 1e-5);
        assert_eq!(c.first_parted, Some(1));
    }

    #[test]
    fn cosine_of_opposite_is_minus_one() {
        let c = compare(&[1.0, 2.0], &[-1.0, -2.0], 1e-5);
        assert!((c.cosine + 1.0).abs() < 1e-12);
    }

    #[test]
    fn report_table_and_json() {
        let mut r = Report::default();
        r.push(Check::new("exact", &[2], &[1.0, 2.0], &[1.0, 2.0], 1e-5));
        assert!(r.passed());
        r.push(Check::new(
            "tampered",
            &[2, 1],
            &[1.0, 2.1],
            &[1.0, 2.0],
            1e-5,
        ));
        assert!(!r.passed());
        assert_eq!(r.first_failure().map(|c| c.name.as_str()), Some("tampered"));
        let t = r.render_table();
        assert!(t.contains("tampered") && t.contains("FAILED") && t.contains("[1, 0]"));
        let j = r.to_json();
        assert_eq!(j["passed"], false);
        assert_eq!(j["checks"][1]["first_parted_at"][0], 1);
        assert_eq!(j["checks"][0]["passed"], true);
    }

    #[test]
    fn skipped_checks_neither_pass_nor_fail() {
        let mut r = Report::default();
        r.push(Check::skipped("mapping parity", "windowed attention"));
        assert!(!r.passed(), "a run of only skipped checks proves nothing");
        r.push(Check::outcome("finite", &[4], 4, None, None));
        assert!(r.passed());
        assert!(r.render_table().contains("skipped: windowed attention"));
        assert_eq!(r.to_json()["checks"][0]["skipped"], "windowed attention");
        r.push(Check::outcome("round trip", &[3], 3, Some(2), Some("`b`".into())));
        assert_eq!(r.first_failure().map(|c| c.name.as_str()), Some("round trip"));
    }

    #[test]
    fn skipped_with_figures_keeps_the_figures() {
        let c = Check::new("clip", &[2], &[1.0, 2.5], &[1.0, 2.0], 1e-5).into_skipped("ln_pre");
        assert_eq!(c.skipped.as_deref(), Some("ln_pre"));
        assert!((c.figures.max_abs - 0.5).abs() < 1e-12 && c.first_parted_at.is_none());
        let mut r = Report::default();
        r.push(c);
        r.push(Check::outcome("finite", &[1], 1, None, None));
        assert!(r.passed());
        assert!(r.render_table().contains("skipped: ln_pre"));
    }

    #[test]
    fn ensure_passed_names_first_failure() {
        let mut r = Report::default();
        r.push(Check::new("ok", &[1], &[1.0], &[1.0], 1e-5));
        assert!(r.ensure_passed().is_ok());
        let mut bad = Check::new("parity image64x64", &[1, 2], &[0.0, 1.0], &[0.0, 0.0], 1e-5);
        bad.note = Some("first parts after blocks.2".into());
        r.push(bad);
        let e = r.ensure_passed().unwrap_err();
        assert!(matches!(e, VerifyError::Parted { ref key, ref index, .. }
            if key == "parity image64x64 (first parts after blocks.2)" && index == &[0, 1]));
    }

    #[test]
    fn ensure_passed_quotes_no_figures_for_a_check_without_a_second_side() {
        let mut r = Report::default();
        r.push(Check::outcome("mapped tensors", &[3], 3, Some(1), Some("`blocks.0.attn.qkv.weight` is not the mapping of the source".into())));
        let e = r.ensure_passed().unwrap_err();
        assert!(matches!(e, VerifyError::Failed { ref key, .. } if key.contains("blocks.0.attn.qkv.weight")));
        let msg = e.to_string();
        assert!(!msg.contains("bound") && !msg.contains("0.000e0"), "{msg}");
    }

    #[test]
    fn verdict_kinds_and_rows_show_only_computed_figures() {
        let mut r = Report::default();
        r.push(Check::outcome("backbone f1", &[1], 1, None, Some("finite".into())));
        r.push(Check::new("mapping parity", &[2], &[1.0, 2.0], &[1.0, 2.0], 1e-5));
        assert_eq!(r.verdict(), Verdict::Passed);
        let table = r.render_table();
        let row = table.lines().find(|l| l.starts_with("backbone f1")).unwrap();
        assert!(!row.contains("e0") && !row.contains("1.0000000") && row.ends_with("ok"), "{row}");
        assert!(table.lines().any(|l| l.starts_with("mapping parity") && l.ends_with("exact")), "{table}");
        let mut approx = Check::new("parity siglip", &[1], &[1.001], &[1.0], 1e-2);
        approx.approximation = Some("tanh GELU".into());
        r.push(approx);
        assert_eq!(r.verdict(), Verdict::PassedWithApproximations);
        let table = r.render_table();
        assert!(table.contains("verdict: passed with approximations"), "{table}");
        assert!(table.contains("parity siglip: tanh GELU, measured max rel 1.000e-3 within 1.0e-2"), "{table}");
        r.push(Check::outcome("fresh", &[2], 2, Some(1), Some("`k`".into())));
        assert_eq!(r.verdict(), Verdict::Failed);
        assert_eq!(Report::default().verdict(), Verdict::NothingRan);
    }
}
