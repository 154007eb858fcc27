//! Family `mae`: facebookresearch/mae pre-training checkpoints (timm-named encoder beside
//! `decoder_*` keys and `mask_token`). Rules in `mappings/mae.toml`.

use super::Family;
use super::detect::{Keys, Meta, SourceConfig, timm_like_config, timm_prefix};
use super::timm_vit::{cls_dist_rows, timm_source_vit};
use crate::model::plain_vit::{LazyVit, Result, Weights};

/// The MAE family.
pub struct Mae;

impl Family for Mae {
    fn name(&self) -> &'static str {
        "mae"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/mae.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        let p = timm_prefix(k)?;
        (k.has(&format!("{p}decoder_embed.weight")) || k.count_indexed(&format!("{p}decoder_blocks.")) > 0)
            .then(|| "decoder_* keys beside the encoder (facebookresearch/mae pre-training layout)".to_string())
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        timm_like_config(k, &timm_prefix(k).unwrap_or_default())
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        timm_source_vit(w, sc, cls_dist_rows(w))
    }
}
