//! Family `dinov2`: facebookresearch/dinov2 bare state dicts (patch 14, `ls1/ls2.gamma` layer
//! scale, `mask_token`, optional `register_tokens`), mirroring dinov2
//! `models/vision_transformer.py`. Rules in `mappings/dinov2.toml`.

use super::detect::{Keys, Meta, SourceConfig, timm_like_config, timm_prefix};
use super::timm_vit::{cls_dist_rows, timm_source_vit};
use super::{Family, Fit, eps_fit};
use crate::model::plain_vit::{PlainVit, Result, Weights};

/// The DINOv2 family.
pub struct Dinov2;

impl Family for Dinov2 {
    fn name(&self) -> &'static str {
        "dinov2"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/dinov2.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        let p = timm_prefix(k)?;
        let patch = k.dim(&format!("{p}patch_embed.proj.weight"), 2);
        (k.has(&format!("{p}blocks.0.ls1.gamma")) || k.has(&format!("{p}register_tokens")) || patch == Some(14))
            .then(|| "ls1/ls2.gamma layer scale (facebookresearch/dinov2 layout)".to_string())
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        timm_like_config(k, &timm_prefix(k).unwrap_or_default())
    }
    fn source_vit(&self, w: &Weights, sc: &SourceConfig) -> Result<PlainVit> {
        timm_source_vit(w, sc, cls_dist_rows(w))
    }
    /// Upstream's ViT branch has no register tokens, and every patch token attends to them in
    /// the source, so dropping them changes every block's output.
    fn fit(&self, sc: &SourceConfig) -> Fit {
        match sc.num_registers {
            0 => eps_fit(sc.layernorm_eps),
            r => Fit::Inexpressible(format!(
                "DINOv2 with {r} register tokens: they were dropped at import and every patch token \
                 attends to them in the source: no stated bound"
            )),
        }
    }
}
