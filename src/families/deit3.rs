//! Family `deit3`: DeiT III checkpoints (facebookresearch/deit `models_v2.py`, timm
//! `deit3_*`): `{"model"}` state dicts in timm names with `no_embed_class` (the position table
//! has no cls row: the cls token is added after the positions) and layer scale, named
//! `blocks.N.ls1.gamma` / `ls2.gamma` by timm and `blocks.N.gamma_1` / `gamma_2` by the
//! facebookresearch/deit release files. Rules in `mappings/deit3.toml`.

use super::Family;
use super::detect::{Keys, Meta, SourceConfig, square, timm_like_config, timm_prefix};
use super::timm_vit::timm_source_vit;
use crate::model::plain_vit::{LazyVit, Result, Weights, lazy_timm};

/// The DeiT III family.
pub struct Deit3;

impl Family for Deit3 {
    fn name(&self) -> &'static str {
        "deit3"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/deit3.toml")
    }
    /// A cls token, layer scale and a patch-16 kernel, but a position table of exactly a
    /// square grid (no cls row): DINOv2 keeps a cls row and uses patch 14.
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        let p = timm_prefix(k)?;
        let key = |s: &str| format!("{p}{s}");
        let grid_only = k.dim(&key("pos_embed"), 1).and_then(square).is_some();
        (k.has(&key("cls_token"))
            && (k.has(&key("blocks.0.ls1.gamma")) || k.has(&key("blocks.0.gamma_1")))
            && !k.has(&key("register_tokens"))
            && k.dim(&key("patch_embed.proj.weight"), 2) != Some(14)
            && grid_only)
            .then(|| {
                "ls1/ls2.gamma layer scale with a position table without a cls row (DeiT III, no_embed_class)"
                    .to_string()
            })
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = timm_prefix(k).unwrap_or_default();
        let mut c = timm_like_config(k, &p)?;
        // no_embed_class: the table is the grid alone; the cls token is the only prefix token.
        c.pretrain_grid = k.dim(&format!("{p}pos_embed"), 1).and_then(square).map(|s| (s, s));
        c.notes.push("position table without a cls row (no_embed_class)".into());
        Ok(c)
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        match sc.layer_scale.as_deref() {
            Some("gamma_1") => lazy_timm(w, sc.num_heads, 0, ["gamma_1", "gamma_2"]),
            _ => timm_source_vit(w, sc, 0),
        }
    }
}
