//! `target.rs`: which ViT-CoMer configuration an import targets — a `--preset`, a `--config`
//! file, a config given in code, or a flavour with the source's own dimensions — resolved in
//! one place. Mirrors what a user does by hand in Python: pick one of upstream's configs
//! (`segmentation/configs/*`, `detection/configs/*`, Co-DETR's `beit_comer` config) or build
//! `ViTCoMer(...)` with the dimensions of the checkpoint at hand.

use std::path::PathBuf;

use crate::families::SourceConfig;
use crate::families::error::ImportError;
use crate::model::{ComerConfig, ConfigError, Flavor};

/// How the target is chosen.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A named upstream configuration (`model::presets`).
    Preset(String),
    /// A `case.json`-style file (`{"flavor", "constructor_kwargs"}`).
    ConfigFile(PathBuf),
    /// A config built in code.
    Config(Box<ComerConfig>),
    /// A flavour with dimensions taken from the source.
    Flavor(Flavor),
}

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The config file could not be read.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The config is malformed or the preset unknown.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Resolve the target config from the spec and, for [`TargetSpec::Flavor`], the source's
/// own config.
pub fn resolve(spec: &TargetSpec, source: &SourceConfig) -> Result<ComerConfig, TargetError> {
    Ok(match spec {
        TargetSpec::Preset(name) => crate::model::presets::preset(name)?,
        TargetSpec::ConfigFile(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| ImportError::Input { path: p.clone(), reason: e.to_string() })?;
            ComerConfig::from_case_json(&text)?
        }
        TargetSpec::Config(c) => (**c).clone(),
        TargetSpec::Flavor(f) => from_source(*f, source)?,
    })
}

/// A config of flavour `f` with the source's dimensions (its head count as the source's
/// detector read or assumed it) and upstream's defaults otherwise: four interactions
/// spread evenly over the blocks, global attention, `img_size = pretrain_size = grid·16`.
pub fn from_source(f: Flavor, s: &SourceConfig) -> Result<ComerConfig, ConfigError> {
    let (embed, depth) = (s.embed_dim, s.depth.max(1));
    let grid = s.pretrain_grid.map(|g| g.0).unwrap_or(14);
    let per = depth.div_ceil(4).max(1);
    let idx: Vec<[usize; 2]> =
        (0..4).map(|i| [(i * per).min(depth - 1), ((i + 1) * per - 1).min(depth - 1)]).collect();
    let mut kw = serde_json::json!({
        "embed_dim": embed, "depth": depth, "num_heads": s.num_heads,
        "mlp_ratio": s.mlp_hidden as f64 / embed.max(1) as f64,
        "patch_size": 16, "img_size": grid * 16, "pretrain_size": grid * 16,
        "interaction_indexes": idx, "deform_num_heads": s.num_heads,
        "window_attn": vec![false; depth],
        "window_size": vec![serde_json::Value::Null; depth],
    });
    if f == Flavor::Beit {
        kw["qkv_bias"] = serde_json::json!(true);
        kw["window_size"] = serde_json::json!(vec![grid; depth]);
        kw["init_values"] = serde_json::json!(1e-6);
    }
    let map = kw.as_object().cloned().unwrap_or_default();
    ComerConfig::from_kwargs(f, &map)
}

/// Refuse a source whose dimensions differ from the target's.
pub fn check_dims(s: &SourceConfig, c: &ComerConfig) -> Result<(), ImportError> {
    let mlp = (c.embed_dim as f64 * c.mlp_ratio) as usize;
    let checks = [
        ("embed dim", s.embed_dim, c.embed_dim),
        ("depth", s.depth, c.depth),
        ("number of heads", s.num_heads, c.num_heads),
        ("mlp hidden size", s.mlp_hidden, mlp),
    ];
    for (what, src, tgt) in checks {
        // An assumed head count is the family's convention, not a fact about the source:
        // the target's own count stands.
        if what == "number of heads" && s.assumed.iter().any(|a| a == "num_heads") {
            continue;
        }
        if src != tgt {
            return Err(ImportError::DimensionMismatch { what: what.into(), source_value: src, target_value: tgt });
        }
    }
    Ok(())
}
