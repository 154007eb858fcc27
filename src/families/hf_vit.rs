//! Family `hf-vit`: Hugging Face `ViTModel` folders (`model.safetensors` + `config.json`) and
//! the `ViT*For*` wrappers around one (`ViTForImageClassification`: the model under `vit.`,
//! a `classifier` head), mirroring transformers `models/vit/modeling_vit.py`. Rules in
//! `mappings/hf-vit.toml`.

use super::detect::{
    Activation, Keys, Meta, PosResize, QkvStyle, RelPos, SourceConfig, eps_from_config, heads_from_config, square,
};
use super::Family;
use crate::model::plain_vit::{
    Attention, Block, LayerNorm, LazyVit, Linear, PatchEmbed, PlainVit, PosEmbed, Result, Weights, embed_dim,
    hidden_of, mlp_depth, pick_prefix, rows2,
};

/// The Hugging Face ViT family.
pub struct HfVit;

impl Family for HfVit {
    fn name(&self) -> &'static str {
        "hf-vit"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/hf-vit.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        k.prefix_of("embeddings.patch_embeddings.projection.weight").map(|p| {
            let names = "Hugging Face ViTModel names (embeddings.patch_embeddings, encoder.layer.N.attention.attention.query/key/value)";
            match p.as_str() {
                "" => names.to_string(),
                p => format!("{names} under '{p}' (a ViT*For* wrapper such as ViTForImageClassification)"),
            }
        })
    }
    fn config(&self, k: &Keys<'_>, metadata: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = k.prefix_of("embeddings.patch_embeddings.projection.weight").unwrap_or_default();
        let key = |s: &str| format!("{p}{s}");
        let cfg = |s: &str| metadata.get(&format!("config.{s}"));
        let Some(embed) = k.dim(&key("embeddings.patch_embeddings.projection.weight"), 0) else {
            return Err("HF ViT without a patch projection".into());
        };
        let mut assumed = Vec::new();
        let mut notes = Vec::new();
        let heads = heads_from_config(cfg("num_attention_heads").map(String::as_str), embed, &mut assumed, &mut notes);
        let eps = eps_from_config(cfg("layer_norm_eps").map(String::as_str), 1e-12, "transformers'", &mut assumed, &mut notes);
        let activation = match cfg("hidden_act").map(String::as_str) {
            Some("quick_gelu") => Activation::QuickGelu,
            Some("gelu") => Activation::Gelu,
            other => {
                assumed.push("activation".into());
                notes.push(format!("hidden_act {other:?}: assumed GELU"));
                Activation::Gelu
            }
        };
        let has_cls = k.has(&key("embeddings.cls_token"));
        let pretrain_grid = k
            .dim(&key("embeddings.position_embeddings"), 1)
            .and_then(|n| n.checked_sub(has_cls as usize))
            .and_then(square)
            .map(|s| (s, s));
        Ok(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("encoder.layer.")),
            num_heads: heads,
            patch_size: k.dim(&key("embeddings.patch_embeddings.projection.weight"), 2).unwrap_or(16),
            pretrain_grid,
            pos_resize: PosResize::Bicubic,
            prefix_tokens: has_cls as usize,
            num_registers: 0,
            mlp_hidden: k.dim(&key("encoder.layer.0.intermediate.dense.weight"), 0).unwrap_or(4 * embed),
            qkv: QkvStyle::Separate,
            layer_scale: None,
            rel_pos: RelPos::None,
            activation,
            layernorm_eps: eps,
            pre_norm: None,
            assumed,
            prefix: p,
            notes,
        })
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        load_hf(w, sc.num_heads, sc.layernorm_eps)
    }
}

/// Hugging Face `ViTModel`: separate `query/key/value` fused here in q, k, v order.
fn load_hf(w: &Weights, heads: usize, eps: f64) -> Result<LazyVit<'_>> {
    let m = pick_prefix(w, "vit.", "embeddings.position_embeddings");
    let kernel_key = format!("{m}embeddings.patch_embeddings.projection.weight");
    let kernel = w.get(&kernel_key)?;
    let c = embed_dim(&kernel_key, &kernel, heads)?;
    let pos_key = format!("{m}embeddings.position_embeddings");
    let pos = PosEmbed::from_rows(&pos_key, &rows2(&pos_key, w.get(&pos_key)?)?, 1)?;
    let layers = format!("{m}encoder.layer");
    let depth = mlp_depth(w, &layers, "layernorm_before.weight")?;
    let stem = PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt(&format!("{m}embeddings.patch_embeddings.projection.bias")),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks: Vec::new(),
    };
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("{layers}.{i}");
        let a = format!("{p}.attention.attention");
        let hidden = hidden_of(w, &format!("{p}.intermediate.dense.weight"))?;
        Ok(Block {
            name: p.clone(),
            norm1: LayerNorm::load(
                w,
                &format!("{p}.layernorm_before"),
                ("weight", "bias"),
                c,
                eps,
            )?,
            attn: Attention {
                qkv: Linear::fused_qkv(w, &a, ["query", "key", "value"], c)?,
                proj: Linear::load(w, &format!("{p}.attention.output.dense"), c, c)?,
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load(
                w,
                &format!("{p}.layernorm_after"),
                ("weight", "bias"),
                c,
                eps,
            )?,
            fc1: Linear::load(w, &format!("{p}.intermediate.dense"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.output.dense"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: None,
            gamma2: None,
        })
    }))
}
