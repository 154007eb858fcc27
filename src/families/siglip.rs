//! Family `siglip`: Hugging Face `SiglipVisionModel` / `Siglip2VisionModel` folders (and the
//! vision tower of a full `SiglipModel`), mirroring transformers
//! `models/siglip/modeling_siglip.py` and `models/siglip2/modeling_siglip2.py`: separate
//! q/k/v projections, `layer_norm1/2`, a position `nn.Embedding` without a cls row, tanh
//! GELU (`gelu_pytorch_tanh`), `post_layernorm` and an attention-pool `head`. SigLIP 2
//! embeds patches with a Linear over `(p, p, 3)`-flattened pixels instead of a convolution.
//! Rules in `mappings/siglip.toml`.

use super::detect::{
    Activation, Keys, Meta, PosResize, QkvStyle, RelPos, SourceConfig, eps_from_config, heads_from_config, square,
};
use super::{Family, Fit};
use crate::model::plain_vit::{
    Attention, Block, LayerNorm, LazyVit, Linear, PatchEmbed, PlainVit, PosEmbed, Result, Weights, embed_dim, hidden_of,
    mlp_depth, rows2, shape_err,
};
use candle_core::Tensor;

/// The SigLIP / SigLIP 2 family.
pub struct Siglip;

/// Relative bound of the tanh-GELU approximation: upstream computes erf GELU, SigLIP was
/// trained with the tanh form; the two differ by at most 4.7e-4 in absolute value per
/// activation, a few 1e-4 relative after a handful of blocks (measured on the fixture).
pub const TANH_GELU_BOUND: f64 = 1e-2;

const PATCH: &str = "embeddings.patch_embedding.weight";

/// The vision tower's key prefix (`vision_model.`).
fn tower_prefix(k: &Keys<'_>) -> Option<String> {
    let p = k.prefix_of(PATCH)?;
    let ok = k.has(&format!("{p}encoder.layers.0.self_attn.q_proj.weight"))
        && k.has(&format!("{p}embeddings.position_embedding.weight"))
        // HF CLIPVisionModel has the same names, plus a class embedding and no patch bias.
        && !k.has(&format!("{p}embeddings.class_embedding"));
    ok.then_some(p)
}

/// The patch kernel as a convolution `(C, 3, p, p)`: SigLIP stores one, SigLIP 2 a Linear
/// `(C, p·p·3)` over pixels flattened `(p, p, 3)` (its processor's patch order).
fn patch_kernel(w: &Weights, key: &str) -> Result<Tensor> {
    let t = w.get(key)?;
    match t.dims() {
        [_, _, _, _] => Ok(t),
        &[c, n] => {
            let p = square(n / 3).filter(|p| 3 * p * p == n).ok_or_else(|| shape_err(key, &t, "(C, p*p*3)"))?;
            Ok(t.reshape((c, p, p, 3))?.permute((0, 3, 1, 2))?.contiguous()?) // (C, 3, p, p)
        }
        _ => Err(shape_err(key, &t, "(C, 3, p, p) or (C, p*p*3)")),
    }
}

impl Family for Siglip {
    fn name(&self) -> &'static str {
        "siglip"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/siglip.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        let p = tower_prefix(k)?;
        let v2 = k.shape(&format!("{p}{PATCH}")).is_some_and(|s| s.len() == 2);
        Some(format!(
            "Hugging Face {} names (embeddings.patch_embedding, encoder.layers.N.self_attn.q/k/v_proj, layer_norm1/2)",
            if v2 { "Siglip2VisionModel" } else { "SiglipVisionModel" }
        ))
    }
    fn config(&self, k: &Keys<'_>, metadata: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = tower_prefix(k).unwrap_or_default();
        let key = |s: &str| format!("{p}{s}");
        // A vision model's config.json holds the values at the top; a full SiglipModel's
        // under `vision_config` (flattened by the reader as one JSON text).
        let vision: serde_json::Value =
            metadata.get("config.vision_config").and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        let cfg = |s: &str| {
            metadata.get(&format!("config.{s}")).cloned().or_else(|| {
                vision.get(s).map(|v| match v {
                    serde_json::Value::String(t) => t.clone(),
                    other => other.to_string(),
                })
            })
        };
        let Some(shape) = k.shape(&key(PATCH)) else { return Err("SigLIP without a patch embedding".into()) };
        let embed = shape[0];
        let patch = match shape {
            [_, _, p, _] => *p,
            [_, n] => square(n / 3).unwrap_or(16),
            _ => return Err(format!("SigLIP patch embedding of shape {shape:?}")),
        };
        let mut assumed = Vec::new();
        let mut notes = Vec::new();
        let heads = heads_from_config(cfg("num_attention_heads").as_deref(), embed, &mut assumed, &mut notes);
        let eps = eps_from_config(cfg("layer_norm_eps").as_deref(), 1e-6, "SigLIP's", &mut assumed, &mut notes);
        let activation = match cfg("hidden_act").as_deref() {
            Some("gelu") => Activation::Gelu,
            Some("gelu_pytorch_tanh") | Some("gelu_new") => Activation::GeluTanh,
            other => {
                assumed.push("activation".into());
                notes.push(format!("hidden_act {other:?}: assumed SigLIP's gelu_pytorch_tanh"));
                Activation::GeluTanh
            }
        };
        let grid = k.dim(&key("embeddings.position_embedding.weight"), 0).and_then(square);
        Ok(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("encoder.layers.")),
            num_heads: heads,
            patch_size: patch,
            pretrain_grid: grid.map(|g| (g, g)),
            // SigLIP resizes its table like timm (bicubic); SigLIP 2 bilinear with antialias.
            pos_resize: if shape.len() == 2 { PosResize::BilinearAntialias } else { PosResize::Bicubic },
            prefix_tokens: 0,
            num_registers: 0,
            mlp_hidden: k.dim(&key("encoder.layers.0.mlp.fc1.weight"), 0).unwrap_or(4 * embed),
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
        let m = &sc.prefix;
        let (heads, eps) = (sc.num_heads, sc.layernorm_eps);
        let kernel_key = format!("{m}{PATCH}");
        let kernel = patch_kernel(w, &kernel_key)?;
        let c = embed_dim(&kernel_key, &kernel, heads)?;
        let pos_key = format!("{m}embeddings.position_embedding.weight");
        let pos = PosEmbed { resize: sc.pos_resize, ..PosEmbed::from_rows(&pos_key, &rows2(&pos_key, w.get(&pos_key)?)?, 0)? };
        let layers = format!("{m}encoder.layers");
        let depth = mlp_depth(w, &layers, "layer_norm1.weight")?;
        let act = sc.activation;
        let stem = PlainVit {
            patch_embed: PatchEmbed { weight: kernel, bias: w.opt(&format!("{m}embeddings.patch_embedding.bias")) },
            pos_embed: Some(pos),
            pre_norm: None,
            blocks: Vec::new(),
        };
        Ok(LazyVit::new(stem, depth, move |i| {
            let p = format!("{layers}.{i}");
            let a = format!("{p}.self_attn");
            let hidden = hidden_of(w, &format!("{p}.mlp.fc1.weight"))?;
            Ok(Block {
                name: p.clone(),
                norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), ("weight", "bias"), c, eps)?,
                attn: Attention {
                    qkv: Linear::fused_qkv(w, &a, ["q_proj", "k_proj", "v_proj"], c)?,
                    proj: Linear::load(w, &format!("{a}.out_proj"), c, c)?,
                    num_heads: heads,
                    rel_pos: None,
                },
                norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), ("weight", "bias"), c, eps)?,
                fc1: Linear::load(w, &format!("{p}.mlp.fc1"), hidden, c)?,
                fc2: Linear::load(w, &format!("{p}.mlp.fc2"), c, hidden)?,
                act,
                gamma1: None,
                gamma2: None,
            })
        }))
    }
    /// tanh GELU becomes upstream's erf GELU: a declared approximation, measured by verify;
    /// the LayerNorm eps is SigLIP's 1e-6, upstream's too.
    fn fit(&self, sc: &SourceConfig) -> Fit {
        match sc.activation {
            Activation::GeluTanh => Fit::Approximation {
                what: "SigLIP's tanh GELU (gelu_pytorch_tanh) becomes upstream's erf GELU".into(),
                bound: TANH_GELU_BOUND,
            },
            _ => super::eps_fit(sc.layernorm_eps),
        }
    }
}
