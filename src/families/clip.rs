//! Family `clip`: OpenAI CLIP / open_clip visual towers (`visual.` beside a text tower, or a
//! TorchScript archive), mirroring open_clip `transformer.py` `VisionTransformer`. Rules in
//! `mappings/clip.toml`.

use super::detect::{
    Activation, Keys, META_ACTIVATION, META_ACTIVATION_FROM, Meta, PosResize, QkvStyle, RelPos, SourceConfig, heads_or_assumed,
    square,
};
use super::{Family, Fit};
use crate::model::plain_vit::{
    Attention, Block, LayerNorm, LazyVit, Linear, PatchEmbed, PlainVit, PosEmbed, Result, Weights, embed_dim,
    hidden_of, mlp_depth, pick_prefix, rows2,
};

/// The CLIP / OpenCLIP family.
pub struct Clip;

/// The visual tower's prefix: the `transformer.resblocks` beside a `conv1` (the text tower
/// has its own resblocks without one).
fn visual_prefix(k: &Keys<'_>) -> Option<String> {
    k.names()
        .filter_map(|key| key.strip_suffix("transformer.resblocks.0.attn.in_proj_weight"))
        .find(|p| k.has(&format!("{p}conv1.weight")))
        .map(str::to_string)
}

impl Family for Clip {
    fn name(&self) -> &'static str {
        "clip"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/clip.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        visual_prefix(k).map(|p| {
            format!("conv1 + transformer.resblocks.N.attn.in_proj_weight under '{p}' (OpenAI CLIP / open_clip visual tower)")
        })
    }
    fn config(&self, k: &Keys<'_>, metadata: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = visual_prefix(k).unwrap_or_default();
        let key = |s: &str| format!("{p}{s}");
        let Some(embed) = k.dim(&key("conv1.weight"), 0) else {
            return Err("CLIP without conv1".into());
        };
        let mut assumed = Vec::new();
        let mut notes = Vec::new();
        let heads = heads_or_assumed(embed, &mut assumed, &mut notes);
        let from = metadata.get(META_ACTIVATION_FROM).cloned().unwrap_or_else(|| "the checkpoint".into());
        let activation = match metadata.get(META_ACTIVATION).map(String::as_str) {
            Some("quick-gelu") => {
                notes.push(format!("QuickGELU named by {from}"));
                Activation::QuickGelu
            }
            Some("gelu") => {
                notes.push(format!("GELU named by {from}"));
                Activation::Gelu
            }
            _ => {
                assumed.push("activation".into());
                notes.push(
                    "activation unknown: QuickGELU and GELU checkpoints hold identical keys and shapes; assumed QuickGELU \
                     (OpenAI weights); for an open_clip model without -quickgelu pass --source-activation gelu (or keep \
                     its open_clip_config.json beside the file)"
                        .into(),
                );
                Activation::QuickGelu
            }
        };
        let pretrain_grid =
            k.dim(&key("positional_embedding"), 0).and_then(|n| n.checked_sub(1)).and_then(square).map(|s| (s, s));
        Ok(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("transformer.resblocks.")),
            num_heads: heads,
            patch_size: k.dim(&key("conv1.weight"), 2).unwrap_or(16),
            pretrain_grid,
            pos_resize: PosResize::Bicubic,
            prefix_tokens: 1,
            num_registers: 0,
            mlp_hidden: k.dim(&key("transformer.resblocks.0.mlp.c_fc.weight"), 0).unwrap_or(4 * embed),
            qkv: QkvStyle::InProj,
            layer_scale: None,
            rel_pos: RelPos::None,
            activation,
            layernorm_eps: 1e-5,
            pre_norm: Some("ln_pre".into()),
            assumed,
            prefix: p,
            notes,
        })
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        load_clip(w, sc.num_heads, sc.activation)
    }
    /// `ln_pre` (a LayerNorm between the position embedding and the first block) is dropped
    /// under --lossy, and for OpenAI weights QuickGELU becomes upstream's exact GELU; a
    /// LayerNorm cannot be folded into the patch kernel or the position table, so no bound
    /// follows from the weights. Reported as skipped, with the measured figures.
    fn fit(&self, sc: &SourceConfig) -> Fit {
        let known = !sc.assumed.iter().any(|a| a == "activation");
        Fit::Inexpressible(format!(
            "CLIP: `ln_pre` was dropped at import (a LayerNorm before the blocks has no place in \
             upstream's layout){}, LayerNorm eps 1e-5 -> 1e-6: no stated bound",
            match (known, sc.activation) {
                (true, Activation::QuickGelu) => ", QuickGELU became exact GELU",
                (true, _) => "",
                (false, _) => {
                    ", and the activation is not recorded (QuickGELU assumed; upstream uses exact GELU; \
                     --source-activation states it)"
                }
            }
        ))
    }
}

/// open_clip / OpenAI CLIP visual tower: `conv1` (no bias), `positional_embedding` (cls row
/// first), `ln_pre`, `transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
/// mlp.c_fc, mlp.c_proj}`; LayerNorm eps 1e-5.
fn load_clip(w: &Weights, heads: usize, act: Activation) -> Result<LazyVit<'_>> {
    let eps = 1e-5;
    let v = pick_prefix(w, "visual.", "conv1.weight");
    let kernel_key = format!("{v}conv1.weight");
    let kernel = w.get(&kernel_key)?;
    let c = embed_dim(&kernel_key, &kernel, heads)?;
    let pos_key = format!("{v}positional_embedding");
    let pos = PosEmbed::from_rows(&pos_key, &rows2(&pos_key, w.get(&pos_key)?)?, 1)?;
    let rb = format!("{v}transformer.resblocks");
    let depth = mlp_depth(w, &rb, "ln_1.weight")?;
    let stem = PlainVit {
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
        blocks: Vec::new(),
    };
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("{rb}.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.c_fc.weight"))?;
        Ok(Block {
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
        })
    }))
}
