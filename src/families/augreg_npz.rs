//! Family `augreg-npz`: Google big_vision / vision_transformer `.npz` (Flax names, HWIO
//! kernels, per-head q/k/v), read as timm's `_load_weights` reads them. Rules in
//! `mappings/augreg-npz.toml`.

use super::detect::{Activation, Keys, Meta, PosResize, QkvStyle, RelPos, SourceConfig, heads_or_assumed, square};
use super::Family;
use crate::model::plain_vit::{
    Attention, Block, LayerNorm, LazyVit, Linear, PatchEmbed, PlainVit, PosEmbed, Result, VitError, Weights, embed_dim,
    rows2, shape_err,
};
use candle_core::Tensor;

/// The AugReg / big_vision family.
pub struct AugregNpz;

impl Family for AugregNpz {
    fn name(&self) -> &'static str {
        "augreg-npz"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/augreg-npz.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        (k.has("embedding/kernel") && k.has("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel")).then(|| {
            "big_vision / vision_transformer Flax names (Transformer/encoderblock_N, HWIO kernels, per-head q/k/v)"
                .to_string()
        })
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        let Some(embed) = k.dim("embedding/kernel", 3) else {
            return Err("big_vision embedding/kernel is not HWIO".into());
        };
        let q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel";
        let mut assumed = Vec::new();
        let mut notes = Vec::new();
        let heads = match k.shape(q) {
            Some([_, h, _]) => {
                notes.push("num_heads from the per-head query kernel".to_string());
                *h
            }
            _ => heads_or_assumed(embed, &mut assumed, &mut notes),
        };
        let has_cls = k.has("cls");
        let pretrain_grid = k
            .dim("Transformer/posembed_input/pos_embedding", 1)
            .and_then(|n| n.checked_sub(has_cls as usize))
            .and_then(square)
            .map(|s| (s, s));
        Ok(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed("Transformer/encoderblock_"),
            num_heads: heads,
            patch_size: k.dim("embedding/kernel", 0).unwrap_or(16),
            pretrain_grid,
            pos_resize: PosResize::Bicubic,
            prefix_tokens: has_cls as usize,
            num_registers: 0,
            mlp_hidden: k.dim("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", 1).unwrap_or(4 * embed),
            qkv: QkvStyle::PerHead,
            layer_scale: None,
            rel_pos: RelPos::None,
            activation: Activation::Gelu,
            layernorm_eps: 1e-6,
            pre_norm: None,
            assumed,
            prefix: String::new(),
            notes,
        })
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        load_augreg(w, sc.num_heads)
    }
}

/// AugReg `.npz` (timm `_load_weights`): `embedding/kernel` HWIO, `Transformer/posembed_input/
/// pos_embedding`, `Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1/
/// {query,key,value,out}, LayerNorm_2, MlpBlock_3/Dense_0, Dense_1}`; Dense kernels `(in, out)`.
fn load_augreg(w: &Weights, heads: usize) -> Result<LazyVit<'_>> {
    let eps = 1e-6;
    let kernel_key = "embedding/kernel";
    let hwio = w.get(kernel_key)?;
    if hwio.dims().len() != 4 {
        return Err(shape_err(kernel_key, &hwio, "(p, p, 3, C)"));
    }
    let kernel = hwio.permute((3, 2, 0, 1))?.contiguous()?; // (C, 3, p, p)
    let c = embed_dim(kernel_key, &kernel, heads)?;
    let pos_key = "Transformer/posembed_input/pos_embedding";
    let prefix = usize::from(w.contains("cls"));
    let pos = PosEmbed::from_rows(pos_key, &rows2(pos_key, w.get(pos_key)?)?, prefix)?;
    let depth = (0..)
        .take_while(|i| w.contains(&format!("Transformer/encoderblock_{i}/LayerNorm_0/scale")))
        .count();
    if depth == 0 {
        return Err(VitError::MissingTensor {
            key: "Transformer/encoderblock_0/LayerNorm_0/scale".into(),
        });
    }
    let d = c / heads;
    // Flax Dense kernel (in, out) → torch (out, in).
    let dense = |key: String| -> Result<Linear> {
        let k = w.get(&format!("{key}/kernel"))?;
        Ok(Linear {
            weight: k.t()?.contiguous()?, // (out, in)
            bias: Some(w.get(&format!("{key}/bias"))?),
        })
    };
    let stem = PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("embedding/bias"),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks: Vec::new(),
    };
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("Transformer/encoderblock_{i}");
        let mha = format!("{p}/MultiHeadDotProductAttention_1");
        let mut ws = Vec::with_capacity(3);
        let mut bs = Vec::with_capacity(3);
        for n in ["query", "key", "value"] {
            let k = w.get_shaped(&format!("{mha}/{n}/kernel"), &[c, heads, d])?;
            ws.push(k.reshape((c, c))?.t()?); // (C_out, C_in)
            let b = w.get_shaped(&format!("{mha}/{n}/bias"), &[heads, d])?;
            bs.push(b.flatten_all()?); // (H*D,)
        }
        let out = w.get_shaped(&format!("{mha}/out/kernel"), &[heads, d, c])?;
        let mlp = format!("{p}/MlpBlock_3");
        let fc1 = dense(format!("{mlp}/Dense_0"))?;
        let hidden = fc1.weight.dim(0)?;
        Ok(Block {
            name: p.clone(),
            norm1: LayerNorm::load_keys(
                w,
                &format!("{p}/LayerNorm_0/scale"),
                &format!("{p}/LayerNorm_0/bias"),
                c,
                eps,
            )?,
            attn: Attention {
                qkv: Linear {
                    weight: Tensor::cat(&ws, 0)?.contiguous()?,
                    bias: Some(Tensor::cat(&bs, 0)?),
                },
                proj: Linear {
                    weight: out.reshape((c, c))?.t()?.contiguous()?, // (C_out, H*D)
                    bias: Some(w.get_shaped(&format!("{mha}/out/bias"), &[c])?),
                },
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load_keys(
                w,
                &format!("{p}/LayerNorm_2/scale"),
                &format!("{p}/LayerNorm_2/bias"),
                c,
                eps,
            )?,
            fc2: {
                let l = dense(format!("{mlp}/Dense_1"))?;
                if l.weight.dims() != [c, hidden] {
                    return Err(shape_err(
                        &format!("{mlp}/Dense_1/kernel"),
                        &l.weight,
                        "(hidden, C)",
                    ));
                }
                l
            },
            fc1,
            act: Activation::Gelu,
            gamma1: None,
            gamma2: None,
        })
    }))
}
