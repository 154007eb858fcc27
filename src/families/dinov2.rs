//! Family `dinov2`: facebookresearch/dinov2 bare state dicts (patch 14, `ls1/ls2.gamma` layer
//! scale, `mask_token`, optional `register_tokens`), mirroring dinov2
//! `models/vision_transformer.py`; and timm's hub layout of the same weights (timm
//! `models/vision_transformer.py` `_convert_dinov2`: no `mask_token`; with registers,
//! `reg_token` and a `no_embed_class` position table of the grid alone, the cls row folded
//! into `cls_token`). Rules in `mappings/dinov2.toml`.

use super::detect::{Keys, Meta, SourceConfig, square, timm_like_config, timm_prefix};
use super::timm_vit::{cls_dist_rows, timm_source_vit};
use super::{Family, Fit, eps_fit};
use crate::model::Flavor;
use crate::model::plain_vit::{LazyVit, Result, Weights};

/// The DINOv2 family.
pub struct Dinov2;

/// timm's name for the register tokens (`[1, R, D]`, facebookresearch's `register_tokens`).
const TIMM_REG_TOKEN: &str = "reg_token";

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
        if k.has(&format!("{p}{TIMM_REG_TOKEN}")) {
            return Some("reg_token register tokens (timm's DINOv2 hub layout)".to_string());
        }
        // Patch 14 alone is not DINOv2's: timm's ViT-g/14 (`vit_giant_patch14_224`) has it
        // too, with neither layer scale nor a mask token.
        let marker = k.has(&format!("{p}blocks.0.ls1.gamma")) || k.has(&format!("{p}register_tokens"));
        (marker || (patch == Some(14) && k.has(&format!("{p}mask_token"))))
            .then(|| "ls1/ls2.gamma layer scale (facebookresearch/dinov2 layout)".to_string())
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = timm_prefix(k).unwrap_or_default();
        let mut c = timm_like_config(k, &p)?;
        if let Some(r) = k.dim(&format!("{p}{TIMM_REG_TOKEN}"), 1) {
            // timm's `no_embed_class`: neither the cls token nor the registers have a row.
            c.num_registers = r;
            c.prefix_tokens = usize::from(k.has(&format!("{p}cls_token"))) + r;
            c.pretrain_grid = k.dim(&format!("{p}pos_embed"), 1).and_then(square).map(|s| (s, s));
            c.notes.push(format!("{r} registers (reg_token); position table without a cls row (timm no_embed_class)"));
        }
        Ok(c)
    }
    /// timm's hub layout (`reg_token`) keeps no prefix rows in its position table.
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        let rows = if w.contains(TIMM_REG_TOKEN) { 0 } else { cls_dist_rows(w) };
        timm_source_vit(w, sc, rows)
    }
    /// Upstream's DINOv2 presets (COCO detection, ViT-CoMer-S/B) are `vit-comer-det`.
    fn preset_flavor(&self) -> Flavor {
        Flavor::Det
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
