//! Family `uniperceiver`: Uni-Perceiver release checkpoints (`fused_encoder.*`), names as
//! inverted from ViT-Adapter's `uniperceiver_converter.py` (`UnifiedBertEncoder`). Rules in
//! `mappings/uniperceiver.toml`.

use super::detect::{Activation, Keys, Meta, PosResize, QkvStyle, RelPos, SourceConfig, heads_or_assumed, square};
use super::{Family, Fit};
use crate::model::plain_vit::{
    Attention, Block, LayerNorm, LazyVit, Linear, PatchEmbed, PlainVit, PosEmbed, Result, Weights, embed_dim,
    hidden_of, mlp_depth, pick_prefix, rows2, shape_err,
};

/// The Uni-Perceiver family.
pub struct Uniperceiver;

fn encoder_prefix(k: &Keys<'_>) -> Option<String> {
    k.prefix_of("fused_encoder.layers.0.self_attn.in_proj_weight").map(|p| format!("{p}fused_encoder."))
}

impl Family for Uniperceiver {
    fn name(&self) -> &'static str {
        "uniperceiver"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/uniperceiver.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        encoder_prefix(k).map(|_| {
            "fused_encoder.layers.N.self_attn.in_proj_* with gamma_1/gamma_2 (Uni-Perceiver release layout)".to_string()
        })
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = encoder_prefix(k).unwrap_or_default();
        let key = |s: &str| format!("{p}{s}");
        let Some(embed) = k.dim(&key("layers.0.self_attn.in_proj_weight"), 1) else {
            return Err("Uni-Perceiver in_proj_weight is not 2-D".into());
        };
        let mut assumed = Vec::new();
        let mut notes = Vec::new();
        let heads = heads_or_assumed(embed, &mut assumed, &mut notes);
        let pretrain_grid =
            k.dim(&key("video_embed.embeddings_st_pos.spatial_pos_embed.weight"), 0).and_then(square).map(|s| (s, s));
        Ok(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("layers.")),
            num_heads: heads,
            patch_size: k.dim(&key("video_embed.embeddings.weight"), 2).unwrap_or(16),
            pretrain_grid,
            pos_resize: PosResize::Bicubic,
            prefix_tokens: 0,
            num_registers: 0,
            mlp_hidden: k.dim(&key("layers.0.linear1.weight"), 0).unwrap_or(4 * embed),
            qkv: QkvStyle::InProj,
            layer_scale: k.has(&key("layers.0.gamma_1")).then(|| "gamma_1".to_string()),
            rel_pos: RelPos::None,
            activation: Activation::Gelu,
            layernorm_eps: 1e-5,
            pre_norm: Some("embeddings_norm".into()),
            assumed,
            prefix: p,
            notes,
        })
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        load_uniperceiver(w, sc.num_heads)
    }
    /// `embeddings_norm` is dropped under --lossy (same reason as CLIP's `ln_pre`); the
    /// temporal position row folds exactly into `pos_embed`.
    fn fit(&self, _: &SourceConfig) -> Fit {
        Fit::Inexpressible(
            "Uni-Perceiver: `embeddings_norm` was dropped at import (a LayerNorm before the blocks has \
             no place in upstream's layout), LayerNorm eps 1e-5 -> 1e-6: no stated bound"
                .into(),
        )
    }
}

/// Uni-Perceiver: `video_embed.embeddings` patch conv, `spatial_pos_embed + temporal_pos_embed[0]`
/// (no class row), `embeddings_norm`, `layers.N.{norm1, self_attn.in_proj_*, self_attn.out_proj,
/// norm2, linear1, linear2, gamma_1, gamma_2}`; LayerNorm eps 1e-5.
fn load_uniperceiver(w: &Weights, heads: usize) -> Result<LazyVit<'_>> {
    let eps = 1e-5;
    let f = pick_prefix(w, "fused_encoder.", "video_embed.embeddings.weight");
    let kernel_key = format!("{f}video_embed.embeddings.weight");
    let kernel = w.get(&kernel_key)?;
    let c = embed_dim(&kernel_key, &kernel, heads)?;
    let st = format!("{f}video_embed.embeddings_st_pos");
    let spatial_key = format!("{st}.spatial_pos_embed.weight");
    let spatial = rows2(&spatial_key, w.get(&spatial_key)?)?;
    let temporal_key = format!("{st}.temporal_pos_embed.weight");
    let temporal = rows2(&temporal_key, w.get(&temporal_key)?)?;
    let t0 = temporal
        .narrow(0, 0, 1)
        .map_err(|_| shape_err(&temporal_key, &temporal, "(T >= 1, C)"))?;
    let pos = PosEmbed::from_rows(&spatial_key, &spatial.broadcast_add(&t0)?, 0)?;
    let layers = format!("{f}layers");
    let depth = mlp_depth(w, &layers, "norm1.weight")?;
    let stem = PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt(&format!("{f}video_embed.embeddings.bias")),
        },
        pos_embed: Some(pos),
        pre_norm: Some(LayerNorm::load(
            w,
            &format!("{f}video_embed.embeddings_norm"),
            ("weight", "bias"),
            c,
            eps,
        )?),
        blocks: Vec::new(),
    };
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("{layers}.{i}");
        let hidden = hidden_of(w, &format!("{p}.linear1.weight"))?;
        Ok(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear {
                    weight: w.get_shaped(&format!("{p}.self_attn.in_proj_weight"), &[3 * c, c])?,
                    bias: Some(w.get_shaped(&format!("{p}.self_attn.in_proj_bias"), &[3 * c])?),
                },
                proj: Linear::load(w, &format!("{p}.self_attn.out_proj"), c, c)?,
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.linear1"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.linear2"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: w.opt(&format!("{p}.gamma_1")),
            gamma2: w.opt(&format!("{p}.gamma_2")),
        })
    }))
}
