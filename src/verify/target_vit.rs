//! `verify/target_vit.rs`: the plain-ViT branch of an imported artifact, on target names.
//!
//! What the ViT branch of upstream ViT-CoMer (`vit_comer.py` `ViTCoMer.forward`, timm
//! `vision_transformer.py` blocks with `gamma1/gamma2`) and BEiTComer2 (`beit_comer.py`, unilm
//! BEiT blocks with `gamma_1/gamma_2` and per-block tables without cls rows) compute when every
//! CTI injection is switched off: patch tokens plus `pos_embed[:, 1:]` (bicubic-resized to the
//! grid), through every block, no final norm. Windowed attention is not modelled: it runs every
//! block globally, which is what verify (a) compares against the source family's forward.
//! This is not the ViT-CoMer forward (that lives in `model/`).

use crate::model::Flavor;
use crate::model::plain_vit::{LazyVit, PlainVit, Result, Weights, lazy_beit, lazy_timm};

/// The upstream target layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TargetFlavour {
    /// `vit-comer-det` / `vit-comer-seg`: timm names, `pos_embed` with its cls row,
    /// `blocks.N.gamma1/gamma2`.
    VitComer,
    /// `beit-comer`: BEiT blocks, `attn.{qkv.weight, q_bias, v_bias,
    /// relative_position_bias_table}`, `gamma_1/gamma_2`, no absolute position embedding.
    BeitComer,
}

impl TargetFlavour {
    /// The layout of a flavour's ViT branch.
    pub fn of(f: Flavor) -> TargetFlavour {
        match f {
            Flavor::Det | Flavor::Seg => TargetFlavour::VitComer,
            Flavor::Beit => TargetFlavour::BeitComer,
        }
    }
}

/// Build the ViT branch of an artifact's tensors (target keys).
pub fn target_vit(flavour: TargetFlavour, w: &Weights, num_heads: usize) -> Result<PlainVit> {
    target_lazy(flavour, w, num_heads)?.build()
}

/// [`target_vit`] with its blocks read one at a time (what mapping parity streams).
pub fn target_lazy(flavour: TargetFlavour, w: &Weights, num_heads: usize) -> Result<LazyVit<'_>> {
    match flavour {
        TargetFlavour::VitComer => lazy_timm(w, num_heads, 1, Flavor::Det.names().layer_scale),
        TargetFlavour::BeitComer => lazy_beit(w, num_heads),
    }
}
