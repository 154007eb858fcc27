//! Family `deit`: facebookresearch/deit checkpoints (plain and distilled), timm names under a
//! `{"model"}` / `{"state_dict"}` wrapper. Rules in `mappings/deit.toml`.

use super::Family;
use super::detect::{Keys, META_WRAPPER, Meta, SourceConfig, timm_like_config, timm_prefix};
use super::timm_vit::{cls_dist_rows, timm_source_vit};
use crate::model::plain_vit::{LazyVit, Result, Weights};

/// The DeiT family.
pub struct Deit;

impl Family for Deit {
    fn name(&self) -> &'static str {
        "deit"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/deit.toml")
    }
    fn recognise(&self, k: &Keys<'_>, meta: &Meta) -> Option<String> {
        let p = timm_prefix(k)?;
        if k.has(&format!("{p}dist_token")) || k.has(&format!("{p}head_dist.weight")) {
            return Some("dist_token/head_dist (DeiT distilled)".into());
        }
        let wrapper = meta.get(META_WRAPPER).map(String::as_str).unwrap_or("");
        (!wrapper.is_empty())
            .then(|| format!("timm ViT names under the '{wrapper}' wrapper (facebookresearch/deit training checkpoints)"))
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        timm_like_config(k, &timm_prefix(k).unwrap_or_default())
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        timm_source_vit(w, sc, cls_dist_rows(w))
    }
}
