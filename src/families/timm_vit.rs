//! Family `timm-vit`: timm `VisionTransformer` state dicts saved bare (timm's own hub
//! checkpoints), mirroring timm `models/vision_transformer.py`. Also home of the timm-named
//! forward the other timm-layout families (DeiT, MAE, DINOv2, DeiT III) share. Rules in
//! `mappings/timm-vit.toml`.

use super::Family;
use super::detect::{Keys, Meta, SourceConfig, timm_like_config, timm_prefix};
use crate::model::plain_vit::{LazyVit, Result, Weights, lazy_timm};

/// The timm ViT family (bare state dicts).
pub struct TimmVit;

/// The timm-named plain ViT of a source: `pos_embed` rows before the grid are its cls and
/// dist rows (`no_embed_class` models such as DeiT III have none), layer scale
/// `blocks.N.ls1.gamma` / `ls2.gamma` where present.
pub fn timm_source_vit<'w>(w: &'w Weights, sc: &SourceConfig, pos_prefix_rows: usize) -> Result<LazyVit<'w>> {
    lazy_timm(w, sc.num_heads, pos_prefix_rows, ["ls1.gamma", "ls2.gamma"])
}

/// cls + dist rows at the head of a timm `pos_embed`.
pub fn cls_dist_rows(w: &Weights) -> usize {
    usize::from(w.contains("cls_token")) + usize::from(w.contains("dist_token"))
}

impl Family for TimmVit {
    fn name(&self) -> &'static str {
        "timm-vit"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/timm-vit.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        timm_prefix(k).map(|_| "timm ViT names in a bare state dict (timm's own checkpoints)".to_string())
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        timm_like_config(k, &timm_prefix(k).unwrap_or_default())
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        timm_source_vit(w, sc, cls_dist_rows(w))
    }
}
