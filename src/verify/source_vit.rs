//! `verify/source_vit.rs`: each source family's own plain-ViT forward, from its own tensor names.
//!
//! One loader per family fills the shared blocks of [`super::vit`] straight from the source
//! checkpoint's state dict (wrapper stripped by `Checkpoint::state_dict()`), mirroring:
//! timm `models/vision_transformer.py` (DeiT, MAE encoder, AugReg `.npz` via `_load_weights`),
//! facebookresearch/dinov2 `models/vision_transformer.py` (`ls1/ls2` layer scale),
//! microsoft/unilm `beit2/modeling_finetune.py` (q/v bias, relative position tables,
//! `gamma_1/gamma_2`), open_clip `transformer.py` (`VisionTransformer`: `conv1`, `ln_pre`,
//! `ResidualAttentionBlock`, QuickGELU), Hugging Face `models/vit/modeling_vit.py`, and
//! Uni-Perceiver's `UnifiedBertEncoder` (as inverted from ViT-Adapter's
//! `uniperceiver_converter.py`). The output is what the sources' `vit_tokens.*` goldens hold:
//! patch tokens without the class token, plus the position embedding without its prefix rows
//! (bicubic-resized for other image sizes), through every block, no final norm.

use candle_core::Tensor;

use super::error::VerifyError;
use super::vit::{
    Activation, Attention, Block, LayerNorm, Linear, PatchEmbed, PlainVit, PosEmbed, RelPosTable,
    Result, Weights, shape_err,
};

/// The source layouts this module runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum SourceFamily {
    /// timm names: DeiT (also distilled), MAE encoder, timm ViT. LayerNorm eps 1e-6.
    Timm,
    /// facebookresearch/dinov2: timm names with `ls1.gamma`/`ls2.gamma`; registers unused.
    Dinov2,
    /// microsoft/unilm BEiT / BEiTv2: per-block or shared relative position tables.
    Beit,
    /// OpenAI CLIP / open_clip visual tower (`visual.` prefix optional), eps 1e-5.
    Clip { activation: Activation },
    /// Hugging Face `ViTModel` names (`vit.` prefix optional), eps from `config.json`.
    HfVit { layer_norm_eps: f64 },
    /// Uni-Perceiver release names (`fused_encoder.` prefix optional), eps 1e-5.
    UniPerceiver,
    /// big_vision / vision_transformer `.npz` (Flax names, HWIO kernels, per-head q/k/v).
    AugRegNpz,
}

/// Build the family's plain ViT from its source tensors. `num_heads` is not stored in most
/// state dicts; AugReg kernels carry it and are checked against it.
pub fn source_vit(family: SourceFamily, w: &Weights, num_heads: usize) -> Result<PlainVit> {
    match family {
        SourceFamily::Timm | SourceFamily::Dinov2 => {
            let prefix =
                usize::from(w.contains("cls_token")) + usize::from(w.contains("dist_token"));
            load_timm(w, num_heads, prefix, ["ls1.gamma", "ls2.gamma"])
        }
        SourceFamily::Beit => load_beit(w, num_heads),
        SourceFamily::Clip { activation } => load_clip(w, num_heads, activation),
        SourceFamily::HfVit { layer_norm_eps } => load_hf(w, num_heads, layer_norm_eps),
        SourceFamily::UniPerceiver => load_uniperceiver(w, num_heads),
        SourceFamily::AugRegNpz => load_augreg(w, num_heads),
    }
}

/// The source forward on `image` `(B, 3, H, W)`: tokens `(B, N, C)`.
pub fn source_vit_tokens(
    family: SourceFamily,
    w: &Weights,
    num_heads: usize,
    image: &Tensor,
) -> Result<Tensor> {
    source_vit(family, w, num_heads)?.forward(image)
}

/// `layer_norm_eps` from a Hugging Face `config.json` text (1e-12, ViT's default, when absent).
pub fn hf_layer_norm_eps(config_json: &str) -> f64 {
    serde_json::from_str::<serde_json::Value>(config_json)
        .ok()
        .and_then(|v| v.get("layer_norm_eps").and_then(serde_json::Value::as_f64))
        .unwrap_or(1e-12)
}

/// `layer_norm_eps` of a Hugging Face folder read by `formats::open` (its `config.json`
/// flattened as `config.layer_norm_eps`), 1e-12 when absent.
pub fn hf_checkpoint_eps(ckpt: &crate::formats::Checkpoint) -> f64 {
    ckpt.metadata
        .get("config.layer_norm_eps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1e-12)
}

/// `prefix` when `probe` exists under it, else the empty prefix.
fn pick_prefix(w: &Weights, prefix: &str, probe: &str) -> String {
    if w.contains(&format!("{prefix}{probe}")) {
        prefix.to_string()
    } else {
        String::new()
    }
}

/// Embed width from a patch kernel `(C, 3, p, p)`, checked against the head count.
fn embed_dim(key: &str, kernel: &Tensor, num_heads: usize) -> Result<usize> {
    let dims = kernel.dims();
    if dims.len() != 4 || num_heads == 0 || !dims[0].is_multiple_of(num_heads) {
        return Err(shape_err(
            key,
            kernel,
            &format!("(C, 3, p, p) with C divisible by {num_heads} heads"),
        ));
    }
    Ok(dims[0])
}

/// A position table as `(rows, C)`, whether stored `(1, rows, C)` or `(rows, C)`.
fn rows2(key: &str, t: Tensor) -> Result<Tensor> {
    match t.dims() {
        [1, _, _] => Ok(t.squeeze(0)?),
        [_, _] => Ok(t),
        _ => Err(shape_err(key, &t, "(1, rows, C) or (rows, C)")),
    }
}

/// Hidden width of an MLP from its first weight `(hidden, C)`.
fn hidden_of(w: &Weights, key: &str) -> Result<usize> {
    let t = w.get(key)?;
    t.dims()
        .first()
        .copied()
        .ok_or_else(|| shape_err(key, &t, "(hidden, C)"))
}

fn mlp_depth(w: &Weights, prefix: &str, probe: &str) -> Result<usize> {
    match w.count_blocks(prefix, probe) {
        0 => Err(VerifyError::MissingTensor {
            key: format!("{prefix}.0.{probe}"),
        }),
        n => Ok(n),
    }
}

/// timm / DeiT / MAE / DINOv2: `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`
/// with optional layer scale `blocks.N.{gammas[0], gammas[1]}` (DINOv2 `ls1.gamma`, ViT-CoMer
/// `gamma1`); `prefix` leading `pos_embed` rows (cls, dist) are dropped.
pub(crate) fn load_timm(
    w: &Weights,
    heads: usize,
    prefix: usize,
    gammas: [&str; 2],
) -> Result<PlainVit> {
    let eps = 1e-6;
    let kernel = w.get("patch_embed.proj.weight")?;
    let c = embed_dim("patch_embed.proj.weight", &kernel, heads)?;
    let pos = rows2("pos_embed", w.get("pos_embed")?)?;
    let pos = PosEmbed::from_rows("pos_embed", &pos, prefix)?;
    let depth = mlp_depth(w, "blocks", "norm1.weight")?;
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = format!("blocks.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.fc1.weight"))?;
        blocks.push(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear::load(w, &format!("{p}.attn.qkv"), 3 * c, c)?,
                proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: w.opt(&format!("{p}.{}", gammas[0])),
            gamma2: w.opt(&format!("{p}.{}", gammas[1])),
        });
    }
    Ok(PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("patch_embed.proj.bias"),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks,
    })
}

/// BEiT / BEiTv2 (unilm): qkv without bias plus `q_bias`/`v_bias` (k bias zero), a per-block
/// `attn.relative_position_bias_table` or the shared `rel_pos_bias.relative_position_bias_table`
/// (minus its 3 cls rows; ViT-CoMer `beit-comer` tables have none), `gamma_1/gamma_2`; an
/// absolute `pos_embed` (with its cls row) only when stored.
pub(crate) fn load_beit(w: &Weights, heads: usize) -> Result<PlainVit> {
    let eps = 1e-6;
    let kernel = w.get("patch_embed.proj.weight")?;
    let c = embed_dim("patch_embed.proj.weight", &kernel, heads)?;
    let pos_embed = match w.opt("pos_embed") {
        Some(t) => Some(PosEmbed::from_rows(
            "pos_embed",
            &rows2("pos_embed", t)?,
            1,
        )?),
        None => None,
    };
    let shared_key = "rel_pos_bias.relative_position_bias_table";
    let shared = match w.opt(shared_key) {
        Some(t) => Some(RelPosTable::from_table(shared_key, &t)?),
        None => None,
    };
    let depth = mlp_depth(w, "blocks", "norm1.weight")?;
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = format!("blocks.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.fc1.weight"))?;
        let q_bias = w.get_shaped(&format!("{p}.attn.q_bias"), &[c])?;
        let v_bias = w.get_shaped(&format!("{p}.attn.v_bias"), &[c])?;
        let qkv_bias = Tensor::cat(&[&q_bias, &q_bias.zeros_like()?, &v_bias], 0)?;
        let table_key = format!("{p}.attn.relative_position_bias_table");
        let rel_pos = match (w.opt(&table_key), &shared) {
            (Some(t), _) => Some(RelPosTable::from_table(&table_key, &t)?),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        };
        blocks.push(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear {
                    weight: w.get_shaped(&format!("{p}.attn.qkv.weight"), &[3 * c, c])?,
                    bias: Some(qkv_bias),
                },
                proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
                num_heads: heads,
                rel_pos,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: w.opt(&format!("{p}.gamma_1")),
            gamma2: w.opt(&format!("{p}.gamma_2")),
        });
    }
    Ok(PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("patch_embed.proj.bias"),
        },
        pos_embed,
        pre_norm: None,
        blocks,
    })
}

/// open_clip / OpenAI CLIP visual tower: `conv1` (no bias), `positional_embedding` (cls row
/// first), `ln_pre`, `transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
/// mlp.c_fc, mlp.c_proj}`; LayerNorm eps 1e-5.
fn load_clip(w: &Weights, heads: usize, act: Activation) -> Result<PlainVit> {
    let eps = 1e-5;
    let v = pick_prefix(w, "visual.", "conv1.weight");
    let kernel_key = format!("{v}conv1.weight");
    let kernel = w.get(&kernel_key)?;
    let c = embed_dim(&kernel_key, &kernel, heads)?;
    let pos_key = format!("{v}positional_embedding");
    let pos = PosEmbed::from_rows(&pos_key, &rows2(&pos_key, w.get(&pos_key)?)?, 1)?;
    let rb = format!("{v}transformer.resblocks");
    let depth = mlp_depth(w, &rb, "ln_1.weight")?;
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = format!("{rb}.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.c_fc.weight"))?;
        blocks.push(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.ln_1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear {
                    weight: w.get_shaped(&format!("{p}.attn.in_proj_weight"), &[3 * c, c])?,
                    bias: Some(w.get_shaped(&format!("{p}.attn.in_proj_bias"), &[3 * c])?),
                },
                proj: Linear::load(w, &format!("{p}.attn.out_proj"), c, c)?,
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load(w, &format!("{p}.ln_2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.c_fc"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.mlp.c_proj"), c, hidden)?,
            act,
            gamma1: None,
            gamma2: None,
        });
    }
    Ok(PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: None,
        },
        pos_embed: Some(pos),
        pre_norm: Some(LayerNorm::load(
            w,
            &format!("{v}ln_pre"),
            ("weight", "bias"),
            c,
            eps,
        )?),
        blocks,
    })
}

/// Hugging Face `ViTModel`: separate `query/key/value` fused here in q, k, v order.
fn load_hf(w: &Weights, heads: usize, eps: f64) -> Result<PlainVit> {
    let m = pick_prefix(w, "vit.", "embeddings.position_embeddings");
    let kernel_key = format!("{m}embeddings.patch_embeddings.projection.weight");
    let kernel = w.get(&kernel_key)?;
    let c = embed_dim(&kernel_key, &kernel, heads)?;
    let pos_key = format!("{m}embeddings.position_embeddings");
    let pos = PosEmbed::from_rows(&pos_key, &rows2(&pos_key, w.get(&pos_key)?)?, 1)?;
    let layers = format!("{m}encoder.layer");
    let depth = mlp_depth(w, &layers, "layernorm_before.weight")?;
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = format!("{layers}.{i}");
        let a = format!("{p}.attention.attention");
        let get = |n: &str, s: &[usize]| w.get_shaped(&format!("{a}.{n}"), s);
        let weight = Tensor::cat(
            &[
                get("query.weight", &[c, c])?,
                get("key.weight", &[c, c])?,
                get("value.weight", &[c, c])?,
            ],
            0,
        )?;
        let bias = Tensor::cat(
            &[
                get("query.bias", &[c])?,
                get("key.bias", &[c])?,
                get("value.bias", &[c])?,
            ],
            0,
        )?;
        let hidden = hidden_of(w, &format!("{p}.intermediate.dense.weight"))?;
        blocks.push(Block {
            name: p.clone(),
            norm1: LayerNorm::load(
                w,
                &format!("{p}.layernorm_before"),
                ("weight", "bias"),
                c,
                eps,
            )?,
            attn: Attention {
                qkv: Linear {
                    weight,
                    bias: Some(bias),
                },
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
        });
    }
    Ok(PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt(&format!("{m}embeddings.patch_embeddings.projection.bias")),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks,
    })
}

/// Uni-Perceiver: `video_embed.embeddings` patch conv, `spatial_pos_embed + temporal_pos_embed[0]`
/// (no class row), `embeddings_norm`, `layers.N.{norm1, self_attn.in_proj_*, self_attn.out_proj,
/// norm2, linear1, linear2, gamma_1, gamma_2}`; LayerNorm eps 1e-5.
fn load_uniperceiver(w: &Weights, heads: usize) -> Result<PlainVit> {
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
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = format!("{layers}.{i}");
        let hidden = hidden_of(w, &format!("{p}.linear1.weight"))?;
        blocks.push(Block {
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
        });
    }
    Ok(PlainVit {
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
        blocks,
    })
}

/// AugReg `.npz` (timm `_load_weights`): `embedding/kernel` HWIO, `Transformer/posembed_input/
/// pos_embedding`, `Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1/
/// {query,key,value,out}, LayerNorm_2, MlpBlock_3/Dense_0, Dense_1}`; Dense kernels `(in, out)`.
fn load_augreg(w: &Weights, heads: usize) -> Result<PlainVit> {
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
        return Err(VerifyError::MissingTensor {
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
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
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
        blocks.push(Block {
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
        });
    }
    Ok(PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("embedding/bias"),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks,
    })
}
