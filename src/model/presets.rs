//! Named configurations of real upstream ViT-CoMer models, each citing its upstream source.
//!
//! The constructor keyword arguments are read from the layouts the upstream code produced
//! (`fixtures/layouts/*.json`, copied from upstream's own configs: ADE20K tiny/small/base,
//! COCO DINOv2 small/base, Co-DETR BEiTv2-large), embedded at build time.

use super::config::{ComerConfig, ConfigError};

/// One named configuration.
pub struct Preset {
    /// The name `--preset` takes.
    pub name: &'static str,
    /// Where upstream defines it.
    pub source: &'static str,
    /// `case.json`-shaped JSON (flavor + constructor_kwargs + the layout).
    json: &'static str,
}

/// Every preset, the order `comer-port presets` lists them in.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "vit-comer-t-seg",
        source: "Traffic-X/ViT-CoMer segmentation/configs/ade20k upernet_vit_comer_tiny (ADE20K 512)",
        json: include_str!("../../fixtures/layouts/vit-comer-seg_tiny_ade20k.json"),
    },
    Preset {
        name: "vit-comer-s-seg",
        source: "Traffic-X/ViT-CoMer segmentation/configs/ade20k upernet_vit_comer_small (ADE20K 512)",
        json: include_str!("../../fixtures/layouts/vit-comer-seg_small_ade20k.json"),
    },
    Preset {
        name: "vit-comer-b-seg",
        source: "Traffic-X/ViT-CoMer segmentation/configs/ade20k upernet_vit_comer_base (ADE20K 512)",
        json: include_str!("../../fixtures/layouts/vit-comer-seg_base_ade20k.json"),
    },
    Preset {
        name: "vit-comer-s-det-dinov2",
        source: "Traffic-X/ViT-CoMer detection/configs COCO ViT-CoMer-S with DINOv2 weights",
        json: include_str!("../../fixtures/layouts/vit-comer-det_small_dinov2.json"),
    },
    Preset {
        name: "vit-comer-b-det-dinov2",
        source: "Traffic-X/ViT-CoMer detection/configs COCO ViT-CoMer-B with DINOv2 weights",
        json: include_str!("../../fixtures/layouts/vit-comer-det_base_dinov2.json"),
    },
    Preset {
        name: "beit-comer-l-codetr",
        source: "Traffic-X/ViT-CoMer@Co-DETR projects/configs co_dino_vit_comer BEiTv2-L (COCO)",
        json: include_str!("../../fixtures/layouts/beit-comer_large_codetr.json"),
    },
];

/// Every preset's name, in [`PRESETS`] order.
pub fn names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|p| p.name)
}

/// The preset of that name, or an error listing the known names.
fn find(name: &str) -> Result<&'static Preset, ConfigError> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| ConfigError::UnknownPreset {
        name: name.to_string(),
        known: names().collect::<Vec<_>>().join(", "),
    })
}

/// The config of a named preset.
pub fn preset(name: &str) -> Result<ComerConfig, ConfigError> {
    let p = find(name)?;
    ComerConfig::from_case_json(p.json)
}

/// The upstream state-dict layout (`[name, shape, dtype]` rows in upstream order) recorded
/// with a preset, for checking generated layouts against upstream.
pub fn preset_layout(name: &str) -> Result<Vec<(String, Vec<usize>, String)>, ConfigError> {
    let p = find(name)?;
    let v: serde_json::Value = serde_json::from_str(p.json).map_err(|e| ConfigError::Json(e.to_string()))?;
    serde_json::from_value(v["state_dict"].clone()).map_err(|e| ConfigError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_preset_parses() {
        for p in super::PRESETS {
            let cfg = super::preset(p.name).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(cfg.depth > 0);
            assert!(!super::preset_layout(p.name).expect("layout").is_empty());
        }
    }
}
