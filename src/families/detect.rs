//! Source-family detection from key patterns and shapes, and the source config it implies.
//!
//! Families are named exactly as `inspect` prints them. Detection looks at the state dict
//! (wrapper already stripped) and any metadata (HF `config.json`).

use crate::formats::{Checkpoint, TensorView};
use serde::Serialize;
use std::collections::BTreeMap;

/// Checkpoint source families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    #[serde(rename = "deit")]
    Deit,
    #[serde(rename = "timm-vit")]
    TimmVit,
    #[serde(rename = "mae")]
    Mae,
    #[serde(rename = "augreg-npz")]
    AugregNpz,
    #[serde(rename = "hf-vit")]
    HfVit,
    #[serde(rename = "dinov2")]
    Dinov2,
    #[serde(rename = "beit")]
    Beit,
    #[serde(rename = "clip")]
    Clip,
    #[serde(rename = "uniperceiver")]
    Uniperceiver,
    #[serde(rename = "unknown")]
    Unknown,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Deit => "deit",
            Family::TimmVit => "timm-vit",
            Family::Mae => "mae",
            Family::AugregNpz => "augreg-npz",
            Family::HfVit => "hf-vit",
            Family::Dinov2 => "dinov2",
            Family::Beit => "beit",
            Family::Clip => "clip",
            Family::Uniperceiver => "uniperceiver",
            Family::Unknown => "unknown",
        }
    }
}

/// How the source stores attention input projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QkvStyle {
    /// timm: one `qkv` Linear with bias.
    FusedBias,
    /// timm without bias.
    FusedNoBias,
    /// BEiT: `qkv` without bias plus `q_bias`/`v_bias` (k bias zero).
    FusedQvBias,
    /// HF: separate `query`/`key`/`value` Linears.
    Separate,
    /// CLIP / Uni-Perceiver: `in_proj_weight` / `in_proj_bias`.
    InProj,
    /// big_vision: per-head q/k/v kernels `(D, H, Dh)`.
    PerHead,
}

/// Relative position bias as stored by the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RelPos {
    None,
    /// One table per block, `(2w−1)² + 3` rows for window `w`.
    PerBlock { window: usize },
    /// One table shared by all blocks (`rel_pos_bias.*`).
    Shared { window: usize },
}

pub use crate::model::Activation;

/// What the source checkpoint implies about its model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    /// Position grid the model was pre-trained at (rows, cols), if it has absolute positions.
    pub pretrain_grid: Option<(usize, usize)>,
    /// Tokens before the patch tokens: cls, dist, registers.
    pub prefix_tokens: usize,
    pub num_registers: usize,
    pub mlp_hidden: usize,
    pub qkv: QkvStyle,
    /// Layer-scale parameter names in the source (`gamma_1`, `ls1.gamma`, …), if any.
    pub layer_scale: Option<String>,
    pub rel_pos: RelPos,
    pub activation: Activation,
    pub layernorm_eps: f64,
    /// A LayerNorm before the blocks (CLIP `ln_pre`, Uni-Perceiver `embeddings_norm`).
    pub pre_norm: Option<String>,
    /// Fields that were not inferred from the checkpoint but taken from the family's
    /// convention (`num_heads`, `activation`, …); the reason says why.
    pub assumed: Vec<String>,
    /// Key prefix of the backbone inside the state dict (`visual.`, `fused_encoder.`, `vit.`),
    /// empty when the keys start at the backbone.
    pub prefix: String,
}

/// Detection result: family, the implied config (None for `unknown`), and the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub family: Family,
    pub config: Option<SourceConfig>,
    /// Why this family was chosen, or why none fits.
    pub reason: String,
}

/// Metadata key under which [`detect_checkpoint`] passes the stripped wrapper path.
pub const META_WRAPPER: &str = "wrapper";
/// Metadata key a reader sets when the container names the activation (TorchScript class
/// names: `quick-gelu` or `gelu`).
pub const META_ACTIVATION: &str = "activation";

/// Detect the family of a whole checkpoint: strips the wrapper, then [`detect`] with the
/// wrapper path added to the metadata.
pub fn detect_checkpoint(ck: &Checkpoint) -> Detection {
    let (wrapper, sd) = ck.state_dict();
    let mut meta = ck.metadata.clone();
    meta.insert(META_WRAPPER.into(), wrapper);
    detect(&sd, &meta)
}

/// Key → shape lookup over a state dict.
struct Keys<'a> {
    map: BTreeMap<&'a str, &'a [usize]>,
}

impl<'a> Keys<'a> {
    fn new(sd: &'a [(String, &'a TensorView)]) -> Self {
        Keys {
            map: sd.iter().map(|(k, t)| (k.as_str(), t.shape.as_slice())).collect(),
        }
    }
    fn shape(&self, k: &str) -> Option<&'a [usize]> {
        self.map.get(k).copied()
    }
    fn has(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }
    fn dim(&self, k: &str, i: usize) -> Option<usize> {
        self.shape(k).and_then(|s| s.get(i).copied())
    }
    /// Prefix before the first key ending in `suffix` (`visual.` for `visual.conv1.weight`).
    fn prefix_of(&self, suffix: &str) -> Option<String> {
        self.map
            .keys()
            .filter(|k| k.ends_with(suffix))
            .map(|k| k[..k.len() - suffix.len()].to_string())
            .min_by_key(|p| p.len())
    }
    /// Number of distinct `N` in keys starting `{head}N.` (also `{head}N/`).
    fn count_indexed(&self, head: &str) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for k in self.map.keys() {
            if let Some(rest) = k.strip_prefix(head) {
                let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(i) = n.parse::<usize>() {
                    seen.insert(i);
                }
            }
        }
        seen.len()
    }
}

/// Heads by convention when nothing in the checkpoint says: head_dim 64 for real models
/// (ViT-H/14 and ViT-g/14 use 16 heads), else the largest of 32/16/8 that divides (tiny
/// test models: embed 48 → 3 heads of 16).
pub fn conventional_heads(embed_dim: usize) -> usize {
    match embed_dim {
        1280 | 1408 => 16,
        d => [64, 32, 16, 8]
            .iter()
            .find(|&&h| d >= h && d % h == 0)
            .map(|h| d / h)
            .unwrap_or(1),
    }
}

/// Side of a square grid of `n` cells, if `n` is a perfect square.
fn square(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n).then_some(r)
}

fn unknown(reason: impl Into<String>) -> Detection {
    Detection {
        family: Family::Unknown,
        config: None,
        reason: reason.into(),
    }
}

/// Detect the family of a state dict (wrapper stripped; keys as in the file otherwise).
/// Pure: looks only at key names, shapes and `metadata` (HF `config.*`, [`META_WRAPPER`],
/// [`META_ACTIVATION`]).
pub fn detect(state_dict: &[(String, &TensorView)], metadata: &BTreeMap<String, String>) -> Detection {
    let k = Keys::new(state_dict);
    if state_dict.is_empty() {
        return unknown("the checkpoint holds no tensors");
    }
    if let Some(p) = k.prefix_of("embeddings.patch_embeddings.projection.weight") {
        return detect_hf(&k, &p, metadata);
    }
    if k.has("embedding/kernel") && k.has("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel") {
        return detect_augreg(&k);
    }
    // CLIP: the visual tower is the `transformer.resblocks` beside a `conv1` (the text
    // tower has its own resblocks without one).
    let clip = k
        .map
        .keys()
        .filter_map(|key| key.strip_suffix("transformer.resblocks.0.attn.in_proj_weight"))
        .find(|p| k.has(&format!("{p}conv1.weight")));
    if let Some(p) = clip {
        return detect_clip(&k, p, metadata);
    }
    if let Some(p) = k.prefix_of("fused_encoder.layers.0.self_attn.in_proj_weight") {
        return detect_uniperceiver(&k, &format!("{p}fused_encoder."));
    }
    if let Some(p) = k.prefix_of("blocks.0.attn.qkv.weight") {
        return detect_timm_like(&k, &p, metadata);
    }
    unknown(format!(
        "no family's key pattern matches (first keys: {})",
        state_dict.iter().take(4).map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    ))
}

fn heads_or_assumed(embed: usize, assumed: &mut Vec<String>, notes: &mut Vec<String>) -> usize {
    let h = conventional_heads(embed);
    assumed.push("num_heads".into());
    notes.push(format!(
        "num_heads cannot be read from the weights: assumed {h} (head_dim {} by the family's convention)",
        embed / h.max(1)
    ));
    h
}

fn detect_timm_like(k: &Keys<'_>, p: &str, metadata: &BTreeMap<String, String>) -> Detection {
    let key = |s: &str| format!("{p}{s}");
    let Some(embed) = k.dim(&key("patch_embed.proj.weight"), 0).or_else(|| k.dim(&key("blocks.0.attn.qkv.weight"), 1)) else {
        return unknown("timm-style blocks without patch_embed.proj.weight");
    };
    let patch = k.dim(&key("patch_embed.proj.weight"), 2).unwrap_or(16);
    let depth = k.count_indexed(&key("blocks."));
    let mlp_hidden = k.dim(&key("blocks.0.mlp.fc1.weight"), 0).unwrap_or(4 * embed);
    let mut assumed = Vec::new();
    let mut notes = Vec::new();
    let has_cls = k.has(&key("cls_token"));
    let has_dist = k.has(&key("dist_token"));
    let registers = k.dim(&key("register_tokens"), 1).unwrap_or(0);
    let pos_prefix = has_cls as usize + has_dist as usize;
    let pretrain_grid = k
        .dim(&key("pos_embed"), 1)
        .and_then(|n| n.checked_sub(pos_prefix))
        .and_then(square)
        .map(|s| (s, s));

    // BEiT: q/v bias, layer scale gamma_1, relative position tables.
    if k.has(&key("blocks.0.attn.q_bias")) || k.has(&key("blocks.0.attn.relative_position_bias_table")) || k.has(&key("rel_pos_bias.relative_position_bias_table")) {
        let (table, shared) = if let Some(s) = k.shape(&key("blocks.0.attn.relative_position_bias_table")) {
            (Some(s), false)
        } else {
            (k.shape(&key("rel_pos_bias.relative_position_bias_table")), true)
        };
        let (rel_pos, heads) = match table {
            Some([rows, cols]) => {
                let w = rows.checked_sub(3).and_then(square).map(|s| s.div_ceil(2));
                match w {
                    Some(w) if (2 * w - 1) * (2 * w - 1) + 3 == *rows => {
                        notes.push(format!("num_heads {cols} from the relative position table's columns"));
                        (if shared { RelPos::Shared { window: w } } else { RelPos::PerBlock { window: w } }, *cols)
                    }
                    _ => return unknown(format!("BEiT relative position table of {rows} rows is not (2w-1)^2+3")),
                }
            }
            _ => (RelPos::None, heads_or_assumed(embed, &mut assumed, &mut notes)),
        };
        let window = match rel_pos {
            RelPos::PerBlock { window } | RelPos::Shared { window } => Some(window),
            RelPos::None => None,
        };
        return Detection {
            family: Family::Beit,
            reason: format!(
                "q_bias/v_bias and gamma_1/gamma_2 (unilm BEiT layout); {} relative position bias{}",
                if matches!(rel_pos, RelPos::Shared { .. }) { "one shared" } else { "per-block" },
                notes.iter().map(|n| format!("; {n}")).collect::<String>()
            ),
            config: Some(SourceConfig {
                embed_dim: embed,
                depth,
                num_heads: heads,
                patch_size: patch,
                pretrain_grid: pretrain_grid.or(window.map(|w| (w, w))),
                prefix_tokens: has_cls as usize,
                num_registers: 0,
                mlp_hidden,
                qkv: if k.has(&key("blocks.0.attn.q_bias")) { QkvStyle::FusedQvBias } else { QkvStyle::FusedNoBias },
                layer_scale: k.has(&key("blocks.0.gamma_1")).then(|| "gamma_1".to_string()),
                rel_pos,
                activation: Activation::Gelu,
                layernorm_eps: 1e-6,
                pre_norm: None,
                assumed,
                prefix: p.to_string(),
            }),
        };
    }
    let heads = heads_or_assumed(embed, &mut assumed, &mut notes);
    let qkv = if k.has(&key("blocks.0.attn.qkv.bias")) { QkvStyle::FusedBias } else { QkvStyle::FusedNoBias };
    let (family, why) = if k.has(&key("blocks.0.ls1.gamma")) || registers > 0 || patch == 14 {
        (Family::Dinov2, "ls1/ls2.gamma layer scale (facebookresearch/dinov2 layout)".to_string())
    } else if k.has(&key("decoder_embed.weight")) || k.count_indexed(&key("decoder_blocks.")) > 0 {
        (Family::Mae, "decoder_* keys beside the encoder (facebookresearch/mae pre-training layout)".to_string())
    } else if has_dist || k.has(&key("head_dist.weight")) {
        (Family::Deit, "dist_token/head_dist (DeiT distilled)".to_string())
    } else {
        let wrapper = metadata.get(META_WRAPPER).map(String::as_str).unwrap_or("");
        if wrapper.is_empty() {
            (Family::TimmVit, "timm ViT names in a bare state dict (timm's own checkpoints)".to_string())
        } else {
            (Family::Deit, format!("timm ViT names under the '{wrapper}' wrapper (facebookresearch/deit training checkpoints)"))
        }
    };
    let layer_scale = if k.has(&key("blocks.0.ls1.gamma")) {
        Some("ls1.gamma".to_string())
    } else if k.has(&key("blocks.0.gamma1")) {
        Some("gamma1".to_string())
    } else {
        None
    };
    Detection {
        family,
        reason: format!("{why}{}", notes.iter().map(|n| format!("; {n}")).collect::<String>()),
        config: Some(SourceConfig {
            embed_dim: embed,
            depth,
            num_heads: heads,
            patch_size: patch,
            pretrain_grid,
            prefix_tokens: pos_prefix + registers,
            num_registers: registers,
            mlp_hidden,
            qkv,
            layer_scale,
            rel_pos: RelPos::None,
            activation: Activation::Gelu,
            layernorm_eps: 1e-6,
            pre_norm: None,
            assumed,
            prefix: p.to_string(),
        }),
    }
}

fn detect_hf(k: &Keys<'_>, p: &str, metadata: &BTreeMap<String, String>) -> Detection {
    let key = |s: &str| format!("{p}{s}");
    let cfg = |s: &str| metadata.get(&format!("config.{s}"));
    let Some(embed) = k.dim(&key("embeddings.patch_embeddings.projection.weight"), 0) else {
        return unknown("HF ViT without a patch projection");
    };
    let patch = k.dim(&key("embeddings.patch_embeddings.projection.weight"), 2).unwrap_or(16);
    let depth = k.count_indexed(&key("encoder.layer."));
    let mut assumed = Vec::new();
    let mut notes = Vec::new();
    let heads = match cfg("num_attention_heads").and_then(|h| h.parse::<usize>().ok()) {
        Some(h) if h > 0 => {
            notes.push("num_heads from config.json".to_string());
            h
        }
        _ => heads_or_assumed(embed, &mut assumed, &mut notes),
    };
    let eps = match cfg("layer_norm_eps").and_then(|e| e.parse::<f64>().ok()) {
        Some(e) => e,
        None => {
            assumed.push("layernorm_eps".into());
            notes.push("no config.json layer_norm_eps: assumed transformers' default 1e-12".into());
            1e-12
        }
    };
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
    Detection {
        family: Family::HfVit,
        reason: format!(
            "Hugging Face ViTModel names (embeddings.patch_embeddings, encoder.layer.N.attention.attention.query/key/value){}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        config: Some(SourceConfig {
            embed_dim: embed,
            depth,
            num_heads: heads,
            patch_size: patch,
            pretrain_grid,
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
            prefix: p.to_string(),
        }),
    }
}

fn detect_augreg(k: &Keys<'_>) -> Detection {
    let Some(embed) = k.dim("embedding/kernel", 3) else {
        return unknown("big_vision embedding/kernel is not HWIO");
    };
    let patch = k.dim("embedding/kernel", 0).unwrap_or(16);
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
    Detection {
        family: Family::AugregNpz,
        reason: format!(
            "big_vision / vision_transformer Flax names (Transformer/encoderblock_N, HWIO kernels, per-head q/k/v){}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        config: Some(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed("Transformer/encoderblock_"),
            num_heads: heads,
            patch_size: patch,
            pretrain_grid,
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
        }),
    }
}

fn detect_clip(k: &Keys<'_>, p: &str, metadata: &BTreeMap<String, String>) -> Detection {
    let key = |s: &str| format!("{p}{s}");
    let Some(embed) = k.dim(&key("conv1.weight"), 0) else {
        return unknown("CLIP without conv1");
    };
    let mut assumed = Vec::new();
    let mut notes = Vec::new();
    let heads = heads_or_assumed(embed, &mut assumed, &mut notes);
    let activation = match metadata.get(META_ACTIVATION).map(String::as_str) {
        Some("quick-gelu") => {
            notes.push("QuickGELU named by the archive's module classes".into());
            Activation::QuickGelu
        }
        Some("gelu") => {
            notes.push("GELU named by the archive's module classes".into());
            Activation::Gelu
        }
        _ => {
            assumed.push("activation".into());
            notes.push(
                "activation unknown: QuickGELU and GELU checkpoints hold identical keys and shapes; assumed QuickGELU (OpenAI weights), an open_clip non-quickgelu model must say GELU"
                    .into(),
            );
            Activation::QuickGelu
        }
    };
    let pretrain_grid = k
        .dim(&key("positional_embedding"), 0)
        .and_then(|n| n.checked_sub(1))
        .and_then(square)
        .map(|s| (s, s));
    Detection {
        family: Family::Clip,
        reason: format!(
            "conv1 + transformer.resblocks.N.attn.in_proj_weight under '{p}' (OpenAI CLIP / open_clip visual tower){}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        config: Some(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("transformer.resblocks.")),
            num_heads: heads,
            patch_size: k.dim(&key("conv1.weight"), 2).unwrap_or(16),
            pretrain_grid,
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
            prefix: p.to_string(),
        }),
    }
}

fn detect_uniperceiver(k: &Keys<'_>, p: &str) -> Detection {
    let key = |s: &str| format!("{p}{s}");
    let Some(embed) = k.dim(&key("layers.0.self_attn.in_proj_weight"), 1) else {
        return unknown("Uni-Perceiver in_proj_weight is not 2-D");
    };
    let mut assumed = Vec::new();
    let mut notes = Vec::new();
    let heads = heads_or_assumed(embed, &mut assumed, &mut notes);
    let pretrain_grid = k
        .dim(&key("video_embed.embeddings_st_pos.spatial_pos_embed.weight"), 0)
        .and_then(square)
        .map(|s| (s, s));
    Detection {
        family: Family::Uniperceiver,
        reason: format!(
            "fused_encoder.layers.N.self_attn.in_proj_* with gamma_1/gamma_2 (Uni-Perceiver release layout){}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        config: Some(SourceConfig {
            embed_dim: embed,
            depth: k.count_indexed(&key("layers.")),
            num_heads: heads,
            patch_size: k.dim(&key("video_embed.embeddings.weight"), 2).unwrap_or(16),
            pretrain_grid,
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
            prefix: p.to_string(),
        }),
    }
}
