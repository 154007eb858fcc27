//! `meta.rs`: what comer-port records in an artifact's header (`__metadata__` of the
//! safetensors file, the `comer_port` entry of the `.pth`): one typed [`ArtifactMeta`],
//! serialised in [`ArtifactMeta::to_map`] and parsed in [`ArtifactMeta::parse`], nowhere
//! else. Upstream has no equivalent: its checkpoints carry weights only.
//!
//! The map's keys and value encodings are the file format (`comer_port.*`, see
//! `docs/import.md`); `to_map` must stay byte-stable for the same inputs and seed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Metadata key prefix of every comer-port field.
pub const PREFIX: &str = "comer_port.";
/// Key of the recorded verification verdict (a JSON object, see `verify::policy`).
pub const VERIFY_KEY: &str = "comer_port.verify";
/// Key of the source checkpoint's SHA-256.
pub const SOURCE_SHA_KEY: &str = "comer_port.source_sha256";

/// How the import transformed what needed transforming, and what it dropped on request.
/// Field order is the serialised order (alphabetical, as the first format had it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transforms {
    /// Decisions the import took, in words (`dropped 'KEY' (--lossy): why`).
    #[serde(default)]
    pub decisions: Vec<String>,
    /// Whether `--lossy` was given.
    #[serde(default)]
    pub lossy: bool,
    /// Patch-kernel resize method: `bilinear` or `pinv`.
    #[serde(default)]
    pub patch_resize: String,
    /// Position-grid resize method: `bicubic`.
    #[serde(default)]
    pub pos_resize: String,
    /// Relative-position table resize method: `bicubic` or `geometric`.
    #[serde(default)]
    pub relpos_resize: String,
    /// Transforms the mapping used, by name.
    #[serde(default)]
    pub used: BTreeSet<String>,
}

impl Transforms {
    /// The source keys `--lossy` dropped, read from the decisions this module wrote
    /// ([`dropped_decision`]); other decisions verbatim.
    pub fn dropped(&self) -> Vec<String> {
        if !self.lossy {
            return Vec::new();
        }
        self.decisions
            .iter()
            .map(|d| match d.strip_prefix("dropped '").and_then(|r| r.split_once('\'')) {
                Some((key, _)) => key.to_string(),
                None => d.clone(),
            })
            .collect()
    }
}

/// The decision text of a source key dropped under `--lossy` (what [`Transforms::dropped`]
/// reads back).
pub fn dropped_decision(key: &str, reason: &str) -> String {
    format!("dropped '{key}' (--lossy): {reason}")
}

/// Everything comer-port records about an artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactMeta {
    /// comer-port's version.
    pub version: String,
    /// The source's file name.
    pub source: String,
    /// The source's SHA-256 (`formats` hash of the file or folder).
    pub source_sha256: String,
    /// The source family.
    pub family: String,
    /// The target flavour.
    pub flavor: String,
    /// The target config in upstream's constructor keywords (`case.json` form), as recorded:
    /// raw JSON, never trusted. A typed config is read from an artifact only through
    /// `target::resolve` (`ComerConfig::from_case_json`, which ends in
    /// `ComerConfig::validate`): a recorded config out of range is refused there as bad input.
    pub config: serde_json::Value,
    /// Seed of the fresh parameters.
    pub seed: u64,
    /// What was transformed and dropped.
    pub transforms: Transforms,
    /// The verification verdict as recorded: a JSON object text.
    pub verify: String,
}

impl ArtifactMeta {
    /// The header map: one string per key, `format: pt` as `safetensors.torch` writes it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("comer_port.version".into(), self.version.clone());
        m.insert("comer_port.source".into(), self.source.clone());
        m.insert(SOURCE_SHA_KEY.into(), self.source_sha256.clone());
        m.insert("comer_port.family".into(), self.family.clone());
        m.insert("comer_port.flavor".into(), self.flavor.clone());
        m.insert("comer_port.config".into(), self.config.to_string());
        m.insert("comer_port.seed".into(), self.seed.to_string());
        m.insert(
            "comer_port.transforms".into(),
            serde_json::to_string(&self.transforms).unwrap_or_else(|_| "{}".into()),
        );
        m.insert(VERIFY_KEY.into(), self.verify.clone());
        m.insert("format".into(), "pt".into());
        m
    }

    /// Read back what [`ArtifactMeta::to_map`] wrote; `None` when the map is not a
    /// comer-port artifact's (no `comer_port.config`). Absent or malformed optional fields
    /// read as empty, never as a guess.
    pub fn parse(m: &BTreeMap<String, String>) -> Option<ArtifactMeta> {
        let get = |k: &str| m.get(&format!("{PREFIX}{k}")).cloned().unwrap_or_default();
        let config = serde_json::from_str(m.get("comer_port.config")?).ok()?;
        Some(ArtifactMeta {
            version: get("version"),
            source: get("source"),
            source_sha256: get("source_sha256"),
            family: get("family"),
            flavor: get("flavor"),
            config,
            seed: get("seed").parse().unwrap_or(0),
            transforms: serde_json::from_str(&get("transforms")).unwrap_or_default(),
            verify: get("verify"),
        })
    }

    /// The transforms of a header map, default when absent (an artifact from elsewhere).
    pub fn transforms_of(m: &BTreeMap<String, String>) -> Transforms {
        m.get("comer_port.transforms").and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
    }
}

/// The verification verdict an artifact records under [`VERIFY_KEY`], read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedVerdict {
    /// Every check that ran passed.
    Passed,
    /// Every check that ran passed, some within the bound of a declared approximation.
    PassedWithApproximations,
    /// Nothing failed, and what `--lossy` dropped was measured: the artifact computes another
    /// function than its source, on request, and the verdict says so.
    Lossy,
    /// A check failed; the first failure as recorded, when it is.
    Failed(Option<String>),
    /// The import did not verify, and why (`--no-verify`, no safetensors output).
    NotRun(String),
    /// Anything else: no verdict (an artifact from elsewhere), one the import never filled
    /// in, or one that does not parse; what was found, in words.
    Missing(String),
}

impl RecordedVerdict {
    /// The verdict recorded in a header map.
    pub fn of(m: &BTreeMap<String, String>) -> RecordedVerdict {
        let Some(text) = m.get(VERIFY_KEY) else {
            return RecordedVerdict::Missing(format!("no {VERIFY_KEY} metadata"));
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return RecordedVerdict::Missing(format!("{VERIFY_KEY} is not a verdict ('{}')", text.chars().take(40).collect::<String>()));
        };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match field("verdict").as_deref() {
            Some("passed") => RecordedVerdict::Passed,
            Some("passed with approximations") => RecordedVerdict::PassedWithApproximations,
            Some("lossy") => RecordedVerdict::Lossy,
            Some("failed") => RecordedVerdict::Failed(field("first_failure")),
            Some("not run") => RecordedVerdict::NotRun(field("why").unwrap_or_default()),
            other => RecordedVerdict::Missing(format!("verdict {}", other.unwrap_or("absent"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ArtifactMeta {
        ArtifactMeta {
            version: "0.1.0".into(),
            source: "deit.pth".into(),
            source_sha256: "ab".repeat(32),
            family: "deit".into(),
            flavor: "vit-comer-seg".into(),
            config: serde_json::json!({"flavor": "vit-comer-seg", "kwargs": {"embed_dim": 48}}),
            seed: 7,
            transforms: Transforms {
                decisions: vec![dropped_decision("visual.ln_pre.weight", "no place"), "kept x".into()],
                lossy: true,
                patch_resize: "bilinear".into(),
                pos_resize: "bicubic".into(),
                relpos_resize: "bicubic".into(),
                used: ["rename".to_string(), "qkv_concat".to_string()].into_iter().collect(),
            },
            verify: r#"{"verdict":"passed"}"#.into(),
        }
    }

    #[test]
    fn round_trips_through_the_header_map() {
        let m = sample();
        assert_eq!(ArtifactMeta::parse(&m.to_map()), Some(m));
    }

    #[test]
    fn transforms_serialise_in_the_first_format() {
        let t = serde_json::to_string(&sample().transforms).expect("json");
        assert!(t.starts_with(r#"{"decisions":["dropped 'visual.ln_pre.weight' (--lossy): no place","kept x"],"lossy":true,"patch_resize":"bilinear""#), "{t}");
        assert!(t.ends_with(r#""used":["qkv_concat","rename"]}"#), "{t}");
    }

    #[test]
    fn dropped_keys_are_read_back() {
        assert_eq!(sample().transforms.dropped(), vec!["visual.ln_pre.weight".to_string(), "kept x".into()]);
        let mut t = sample().transforms;
        t.lossy = false;
        assert!(t.dropped().is_empty());
    }

    #[test]
    fn recorded_verdicts_read_back() {
        let with = |v: &str| BTreeMap::from([(VERIFY_KEY.to_string(), v.to_string())]);
        assert_eq!(RecordedVerdict::of(&sample().to_map()), RecordedVerdict::Passed);
        assert_eq!(
            RecordedVerdict::of(&with(r#"{"verdict":"failed","first_failure":"backbone f1"}"#)),
            RecordedVerdict::Failed(Some("backbone f1".into()))
        );
        assert_eq!(
            RecordedVerdict::of(&with(r#"{"verdict":"not run","why":"--no-verify"}"#)),
            RecordedVerdict::NotRun("--no-verify".into())
        );
        assert_eq!(RecordedVerdict::of(&with(r#"{"verdict":"lossy"}"#)), RecordedVerdict::Lossy);
        assert!(matches!(RecordedVerdict::of(&with("pending~~~")), RecordedVerdict::Missing(_)));
        assert!(matches!(RecordedVerdict::of(&BTreeMap::new()), RecordedVerdict::Missing(_)));
    }

    #[test]
    fn a_foreign_map_is_not_an_artifact() {
        assert_eq!(ArtifactMeta::parse(&BTreeMap::new()), None);
    }
}
