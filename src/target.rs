//! Which ViT-CoMer configuration an artifact targets: `--preset`, `--config` file, the
//! artifact's recorded config, or a flavour with the source's dimensions.
//!
//! The one config resolver: `import` resolves against the source it reads (a flavour takes
//! the source's dimensions), `run`, `verify`, `export` and `demo` against an artifact (an
//! explicit `--config` / `--preset` wins, else the config the artifact records in its
//! `comer_port.config` metadata). Configs themselves are `model::ComerConfig` in upstream's
//! `case.json` shape; the named ones are `model::presets`.

use std::path::{Path, PathBuf};

use crate::families::mapping::SourceDims;
use crate::formats::FormatError;
use crate::model::{ComerConfig, ConfigError, Flavor, presets};

/// Metadata key under which an artifact records its config (`case.json` shape).
pub const CONFIG_METADATA_KEY: &str = "comer_port.config";

/// How the target configuration is chosen.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A named preset (see `model::presets`).
    Preset(String),
    /// A config file in the fixtures' `case.json` shape.
    ConfigFile(PathBuf),
    /// A config already in hand.
    Config(Box<ComerConfig>),
    /// A flavour with dimensions inferred from the source, upstream's defaults otherwise.
    Flavor(Flavor),
    /// The config the artifact records in its [`CONFIG_METADATA_KEY`] metadata.
    Recorded,
}

impl TargetSpec {
    /// The spec `--config FILE` or `--preset NAME` names (the parsers let at most one
    /// through), or `None` when neither is given.
    pub fn from_flags(config: Option<&Path>, preset: Option<&str>) -> Option<TargetSpec> {
        match (config, preset) {
            (Some(path), _) => Some(TargetSpec::ConfigFile(path.to_path_buf())),
            (None, Some(name)) => Some(TargetSpec::Preset(name.to_string())),
            (None, None) => None,
        }
    }
}

/// What a spec is resolved against.
#[derive(Debug, Clone, Copy)]
pub enum Basis<'a> {
    /// A source being imported, with its inferred dimensions (what [`TargetSpec::Flavor`] takes).
    Source(&'a SourceDims),
    /// An artifact on disk (what [`TargetSpec::Recorded`] reads; opened only then).
    Artifact(&'a Path),
}

/// Why no configuration could be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A `--config` file or the artifact could not be read.
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What reading it reported.
        reason: String,
    },
    /// The config is refused: an unknown preset, bad JSON, a keyword upstream does not take.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The artifact whose recorded config was asked for is not a checkpoint comer-port reads.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A flavour was asked for, but the source does not show one of its dimensions.
    #[error(
        "could not tell which family this checkpoint belongs to (cannot infer the source's {what}; pass --config or --preset); pass --family"
    )]
    UnknownDims {
        /// The dimension (`embed dim`, `depth`).
        what: String,
    },
    /// No config was given and the artifact records none.
    #[error("{path}: no --config or --preset given and no '{CONFIG_METADATA_KEY}' metadata in the weights")]
    NotRecorded {
        /// The artifact.
        path: PathBuf,
    },
    /// The recorded config was asked for while importing a source, which records none.
    #[error("choose a target: --preset NAME, --config C.json or --flavor FLAVOR")]
    NoTarget,
}

/// Resolve `spec` against `basis`: a preset by name, a config file, a config in hand, a
/// flavour with the source's dimensions (an artifact shows none), or the artifact's
/// recorded config (a source records none).
pub fn resolve(spec: &TargetSpec, basis: Basis<'_>) -> Result<ComerConfig, TargetError> {
    Ok(match spec {
        TargetSpec::Preset(name) => presets::preset(name)?,
        TargetSpec::ConfigFile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| TargetError::Input { path: path.clone(), reason: e.to_string() })?;
            ComerConfig::from_case_json(&text)?
        }
        TargetSpec::Config(c) => (**c).clone(),
        TargetSpec::Flavor(f) => match basis {
            Basis::Source(dims) => config_from_dims(*f, dims)?,
            Basis::Artifact(_) => config_from_dims(*f, &SourceDims::default())?,
        },
        TargetSpec::Recorded => match basis {
            Basis::Artifact(path) => {
                // An unreadable file is named once (`FormatError::Io` also carries its cause).
                let ck = crate::formats::open(path).map_err(|e| match e {
                    FormatError::Io { path, source } => TargetError::Input { path, reason: source.to_string() },
                    other => other.into(),
                })?;
                match ck.metadata.get(CONFIG_METADATA_KEY) {
                    Some(json) => ComerConfig::from_case_json(json)?,
                    None => return Err(TargetError::NotRecorded { path: path.to_path_buf() }),
                }
            }
            Basis::Source(_) => return Err(TargetError::NoTarget),
        },
    })
}

/// A config of flavour `f` with the source's dimensions and upstream's defaults otherwise:
/// the interactions split the blocks into four even stretches, attention is global, the
/// image and pretrain size are the source's grid times 16.
pub fn config_from_dims(f: Flavor, d: &SourceDims) -> Result<ComerConfig, TargetError> {
    let need = |v: Option<usize>, what: &str| v.ok_or_else(|| TargetError::UnknownDims { what: what.into() });
    let embed = need(d.embed_dim, "embed dim")?;
    let depth = need(d.depth, "depth")?;
    let heads = d.num_heads.unwrap_or((embed / 64).max(1));
    let mlp = d.mlp_hidden.unwrap_or(embed * 4);
    let grid = d.grid.unwrap_or(14);
    let per = depth.div_ceil(4).max(1);
    let idx: Vec<[usize; 2]> = (0..4)
        .map(|i| [(i * per).min(depth - 1), ((i + 1) * per - 1).min(depth - 1)])
        .collect();
    let mut kw = serde_json::json!({
        "embed_dim": embed, "depth": depth, "num_heads": heads,
        "mlp_ratio": mlp as f64 / embed as f64,
        "patch_size": 16, "img_size": grid * 16, "pretrain_size": grid * 16,
        "interaction_indexes": idx, "deform_num_heads": heads,
        "window_attn": vec![false; depth],
        "window_size": vec![serde_json::Value::Null; depth],
    });
    if f == Flavor::Beit {
        kw["qkv_bias"] = serde_json::json!(true);
        kw["window_size"] = serde_json::json!(vec![grid; depth]);
        kw["init_values"] = serde_json::json!(1e-6);
    }
    let map = kw.as_object().cloned().unwrap_or_default();
    Ok(ComerConfig::from_kwargs(f, &map)?)
}

#[cfg(test)]
mod tests {
    //! One test per [`TargetError`] variant, matching the variant, not the message; and the
    //! precedence of the specs.
    use super::*;

    const TINY: &str = include_str!("../fixtures/forward/det_tiny/case.json");

    fn dims() -> SourceDims {
        SourceDims { embed_dim: Some(48), depth: Some(4), num_heads: Some(3), grid: Some(4), ..Default::default() }
    }

    #[test]
    fn input() {
        let spec = TargetSpec::ConfigFile("/nonexistent/c.json".into());
        let e = resolve(&spec, Basis::Source(&dims())).expect_err("missing file");
        assert!(matches!(e, TargetError::Input { .. }), "{e}");
    }

    #[test]
    fn config() {
        let e = resolve(&TargetSpec::Preset("nope".into()), Basis::Source(&dims())).expect_err("unknown preset");
        assert!(matches!(e, TargetError::Config(ConfigError::UnknownPreset { .. })), "{e}");
    }

    #[test]
    fn format() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/forward/det_tiny/case.json");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("not a checkpoint");
        assert!(matches!(e, TargetError::Format(_)), "{e}");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(Path::new("/nonexistent/a.safetensors")))
            .expect_err("missing artifact");
        assert!(matches!(e, TargetError::Input { .. }), "{e}");
    }

    #[test]
    fn unknown_dims() {
        let e = resolve(&TargetSpec::Flavor(Flavor::Det), Basis::Source(&SourceDims::default())).expect_err("no dims");
        assert!(matches!(e, TargetError::UnknownDims { .. }), "{e}");
        let e = resolve(&TargetSpec::Flavor(Flavor::Det), Basis::Artifact(Path::new("a"))).expect_err("no dims");
        assert!(matches!(e, TargetError::UnknownDims { .. }), "{e}");
    }

    #[test]
    fn not_recorded() {
        // A source checkpoint read as an artifact: it opens, but records no config.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sources/deit/deit_tiny.pth");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("no metadata");
        assert!(matches!(e, TargetError::NotRecorded { .. }), "{e}");
    }

    #[test]
    fn no_target() {
        let e = resolve(&TargetSpec::Recorded, Basis::Source(&dims())).expect_err("nothing recorded");
        assert!(matches!(e, TargetError::NoTarget), "{e}");
    }

    #[test]
    fn flags_and_flavours() {
        assert!(TargetSpec::from_flags(None, None).is_none());
        let c = Path::new("c.json");
        assert!(matches!(TargetSpec::from_flags(Some(c), None), Some(TargetSpec::ConfigFile(_))));
        assert!(matches!(TargetSpec::from_flags(None, Some("p")), Some(TargetSpec::Preset(_))));
        let tiny = ComerConfig::from_case_json(TINY).expect("tiny");
        let got = resolve(&TargetSpec::Config(Box::new(tiny.clone())), Basis::Source(&dims())).expect("in hand");
        assert_eq!(got, tiny);
        let beit = resolve(&TargetSpec::Flavor(Flavor::Beit), Basis::Source(&dims())).expect("beit");
        assert_eq!((beit.flavor, beit.embed_dim, beit.depth, beit.img_size), (Flavor::Beit, 48, 4, 64));
    }
}
