//! What a source checkpoint is: the one [`SourceConfig`] type every family fills, the
//! key/shape lookup ([`Keys`]) family detectors read, and the driver that asks the
//! registered families ([`super::FAMILIES`]) in order.
//!
//! Families are named exactly as `inspect` prints them. Detection looks at the state dict
//! (wrapper already stripped) and any metadata (HF `config.json` flattened as `config.*`,
//! [`META_WRAPPER`], [`META_ACTIVATION`]); each family's own rules live in its
//! `families/<family>.rs`.

use crate::formats::{Checkpoint, TensorView};
pub use crate::model::plain_vit::{Activation, PosResize};
use serde::Serialize;
use std::collections::BTreeMap;

/// Metadata handed to detectors: HF `config.*` values, the wrapper path, the activation.
pub type Meta = BTreeMap<String, String>;

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
    /// No relative position bias.
    None,
    /// One table per block, `(2w−1)² + 3` rows for window `w`.
    PerBlock {
        /// The window side.
        window: usize,
    },
    /// One table shared by all blocks (`rel_pos_bias.*`).
    Shared {
        /// The window side.
        window: usize,
    },
}

/// What the source checkpoint implies about its model: the one source-config type of the
/// crate, read by the family's detector and used by the import (target dimensions, head
/// count) and by verify (the source's own forward).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceConfig {
    /// Token width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads: from the weights or `config.json` where stored, else assumed (listed
    /// in [`SourceConfig::assumed`]).
    pub num_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Position grid the model was pre-trained at (rows, cols), if it has absolute positions.
    pub pretrain_grid: Option<(usize, usize)>,
    /// How the source resizes its position table at run time.
    pub pos_resize: PosResize,
    /// Tokens before the patch tokens: cls, dist, registers.
    pub prefix_tokens: usize,
    /// Register tokens (DINOv2 with registers).
    pub num_registers: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
    /// How the attention input projection is stored.
    pub qkv: QkvStyle,
    /// Layer-scale parameter names in the source (`gamma_1`, `ls1.gamma`, …), if any.
    pub layer_scale: Option<String>,
    /// Relative position bias, if any.
    pub rel_pos: RelPos,
    /// MLP activation.
    pub activation: Activation,
    /// LayerNorm eps of the source's blocks.
    pub layernorm_eps: f64,
    /// A LayerNorm before the blocks (CLIP `ln_pre`, Uni-Perceiver `embeddings_norm`).
    pub pre_norm: Option<String>,
    /// Fields that were not inferred from the checkpoint but taken from the family's
    /// convention (`num_heads`, `activation`, …); the notes say why.
    pub assumed: Vec<String>,
    /// Key prefix of the backbone inside the state dict (`visual.`, `fused_encoder.`, `vit.`),
    /// empty when the keys start at the backbone.
    pub prefix: String,
    /// Where each field came from, in words (joined into [`Detection::reason`]).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// Detection result: family, the implied config (None for `unknown`), and the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// The family's name (`unknown` when none fits).
    pub family: &'static str,
    /// The source's config, when a family fits.
    pub config: Option<SourceConfig>,
    /// Why this family was chosen, or why none fits.
    pub reason: String,
    /// The family that recognised the keys but cannot hold the model they describe (a
    /// SwiGLU MLP): `family` is then `unknown` and `reason` says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'static str>,
}

impl Detection {
    /// The registered family that was detected, if any.
    pub fn family(&self) -> Option<&'static dyn super::Family> {
        super::by_name(self.family).ok()
    }
}

/// Metadata key under which [`detect_checkpoint`] passes the stripped wrapper path.
pub const META_WRAPPER: &str = "wrapper";
/// Metadata keys a reader sets when the container names the activation (`quick-gelu` or
/// `gelu`: TorchScript class names, open_clip's `open_clip_config.json`) and where from;
/// `import`/`verify --source-activation` set them too ([`set_activation`]).
pub use crate::formats::{META_ACTIVATION, META_ACTIVATION_FROM};

/// Record in a checkpoint's metadata that its MLP activation is QuickGELU (`quick_gelu`) or
/// exact GELU, as `from` says: what `--source-activation` does before detection, overriding
/// what the container named.
pub fn set_activation(meta: &mut BTreeMap<String, String>, quick_gelu: bool, from: &str) {
    let name = if quick_gelu { "quick-gelu" } else { "gelu" };
    meta.insert(META_ACTIVATION.into(), name.into());
    meta.insert(META_ACTIVATION_FROM.into(), from.into());
}

/// Detect the family of a whole checkpoint: strips the wrapper, then [`detect`] with the
/// wrapper path added to the metadata.
pub fn detect_checkpoint(ck: &Checkpoint) -> Detection {
    let (wrapper, sd) = ck.state_dict();
    detect(&sd, &checkpoint_meta(ck, wrapper))
}

/// The metadata detectors see for `ck`: its own, plus the stripped wrapper path.
pub fn checkpoint_meta(ck: &Checkpoint, wrapper: String) -> Meta {
    let mut meta = ck.metadata.clone();
    meta.insert(META_WRAPPER.into(), wrapper);
    meta
}

/// Detect the family of a state dict (wrapper stripped; keys as in the file otherwise).
/// Pure: looks only at key names, shapes and `metadata`. The first registered family that
/// recognises the keys and can read its config wins.
pub fn detect(state_dict: &[(String, &TensorView)], metadata: &Meta) -> Detection {
    if state_dict.is_empty() {
        return unknown("the checkpoint holds no tensors");
    }
    let k = Keys::new(state_dict);
    for f in super::FAMILIES {
        let Some(why) = f.recognise(&k, metadata) else { continue };
        return match f.config(&k, metadata) {
            Ok(config) => Detection {
                family: f.name(),
                reason: format!("{why}{}", config.notes.iter().map(|n| format!("; {n}")).collect::<String>()),
                config: Some(config),
                refused: None,
            },
            Err(reason) => Detection { refused: Some(f.name()), ..unknown(reason) },
        };
    }
    unknown(format!(
        "no family's key pattern matches (first keys: {})",
        state_dict.iter().take(4).map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    ))
}

fn unknown(reason: impl Into<String>) -> Detection {
    Detection { family: "unknown", config: None, reason: reason.into(), refused: None }
}

/// Why a state dict (or its metadata) is a ViT-CoMer artifact rather than a plain-ViT
/// source, or `None`: comer-port's `comer_port.config` metadata, or upstream's `level_embed`
/// (every flavour has one, under any prefix such as mmdet's `backbone.`).
pub fn comer_artifact(sd: &[(String, &TensorView)], metadata: &Meta) -> Option<String> {
    if metadata.contains_key("comer_port.config") {
        return Some("it records comer_port.config metadata".to_string());
    }
    sd.iter()
        .find(|(k, _)| k == "level_embed" || k.ends_with(".level_embed"))
        .map(|(k, _)| format!("it holds '{k}', the CNN levels' embedding of upstream's ViT-CoMer"))
}

/// Key → shape lookup over a state dict.
pub struct Keys<'a> {
    map: BTreeMap<&'a str, &'a [usize]>,
}

impl<'a> Keys<'a> {
    /// The lookup over `sd`.
    pub fn new(sd: &'a [(String, &'a TensorView)]) -> Self {
        Keys { map: sd.iter().map(|(k, t)| (k.as_str(), t.shape.as_slice())).collect() }
    }
    /// Shape of `k`.
    pub fn shape(&self, k: &str) -> Option<&'a [usize]> {
        self.map.get(k).copied()
    }
    /// Whether `k` exists.
    pub fn has(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }
    /// Dimension `i` of `k`.
    pub fn dim(&self, k: &str, i: usize) -> Option<usize> {
        self.shape(k).and_then(|s| s.get(i).copied())
    }
    /// Every key, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.map.keys().copied()
    }
    /// Prefix before the first key ending in `suffix` (`visual.` for `visual.conv1.weight`).
    pub fn prefix_of(&self, suffix: &str) -> Option<String> {
        self.map
            .keys()
            .filter(|k| k.ends_with(suffix))
            .map(|k| k[..k.len() - suffix.len()].to_string())
            .min_by_key(|p| p.len())
    }
    /// Number of distinct `N` in keys starting `{head}N.` (also `{head}N/`).
    pub fn count_indexed(&self, head: &str) -> usize {
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
        d => [64, 32, 16, 8].iter().find(|&&h| d >= h && d % h == 0).map(|h| d / h).unwrap_or(1),
    }
}

/// The conventional head count, recorded as an assumption with its reason.
pub fn heads_or_assumed(embed: usize, assumed: &mut Vec<String>, notes: &mut Vec<String>) -> usize {
    let h = conventional_heads(embed);
    assumed.push("num_heads".into());
    notes.push(format!(
        "num_heads cannot be read from the weights: assumed {h} (head_dim {} by the family's convention)",
        embed / h.max(1)
    ));
    h
}

/// The head count a Hugging Face `config.json` states (`num_attention_heads`), else the
/// conventional one, recorded as an assumption.
pub fn heads_from_config(value: Option<&str>, embed: usize, assumed: &mut Vec<String>, notes: &mut Vec<String>) -> usize {
    match value.and_then(|h| h.parse::<usize>().ok()) {
        Some(h) if h > 0 => {
            notes.push("num_heads from config.json".to_string());
            h
        }
        _ => heads_or_assumed(embed, assumed, notes),
    }
}

/// The LayerNorm eps a Hugging Face `config.json` states (`layer_norm_eps`), else `default`
/// (`whose` default, named in the note), recorded as an assumption.
pub fn eps_from_config(
    value: Option<&str>,
    default: f64,
    whose: &str,
    assumed: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> f64 {
    match value.and_then(|e| e.parse::<f64>().ok()) {
        Some(e) => e,
        None => {
            assumed.push("layernorm_eps".into());
            notes.push(format!("no config.json layer_norm_eps: assumed {whose} default {default:e}"));
            default
        }
    }
}

/// Side of a square grid of `n` cells, if `n` is a perfect square.
pub fn square(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n).then_some(r)
}

/// The key prefix of timm-named blocks (`blocks.0.attn.qkv.weight`), if present.
pub fn timm_prefix(k: &Keys<'_>) -> Option<String> {
    k.prefix_of("blocks.0.attn.qkv.weight")
}

/// Why the MLP of timm-named blocks under `p` is a SwiGLU, or `None` for the plain
/// `fc1 -> GELU -> fc2` Mlp upstream's ViT-CoMer blocks have: timm's `SwiGLU`
/// (`mlp.fc1_g`/`mlp.fc1_x`), timm's `SwiGLUPacked` (one `mlp.fc1` twice as wide as `mlp.fc2`
/// takes: DINOv2 ViT-g in timm's hub layout) and facebookresearch/dinov2's
/// `SwiGLUFFNFused` (`mlp.w12`/`mlp.w3`, DINOv2 ViT-g/14).
pub fn swiglu_mlp(k: &Keys<'_>, p: &str) -> Option<String> {
    let key = |s: &str| format!("{p}blocks.0.mlp.{s}");
    let kind = if k.has(&key("w12.weight")) {
        Some(("w12", "facebookresearch/dinov2 SwiGLUFFNFused (ViT-g/14)"))
    } else if k.has(&key("fc1_g.weight")) || k.has(&key("fc1_x.weight")) {
        Some(("fc1_g", "timm SwiGLU"))
    } else {
        match (k.dim(&key("fc1.weight"), 0), k.dim(&key("fc2.weight"), 1)) {
            (Some(up), Some(down)) if up == 2 * down => Some(("fc1", "timm SwiGLUPacked (DINOv2 ViT-g in timm's layout)")),
            _ => None,
        }
    };
    kind.map(|(name, what)| {
        format!(
            "'{}' is a gated SwiGLU MLP ({what}); upstream ViT-CoMer's blocks have the plain Mlp (fc1 -> GELU -> fc2), \
             so no flavour can hold these weights. Use a checkpoint with a GELU MLP (for ViT-g: timm \
             vit_giant_patch14_224, or a DINOv2 ViT-S/B/L)",
            key(&format!("{name}.weight"))
        )
    })
}

/// The config of timm-named blocks under `p` (DeiT, timm ViT, MAE, DINOv2, DeiT III, BEiT):
/// dimensions from the weights, heads assumed by convention, no relative position bias. The
/// calling family adjusts what its layout says more precisely. A SwiGLU MLP is refused
/// ([`swiglu_mlp`]).
pub fn timm_like_config(k: &Keys<'_>, p: &str) -> Result<SourceConfig, String> {
    if let Some(why) = swiglu_mlp(k, p) {
        return Err(why);
    }
    let key = |s: &str| format!("{p}{s}");
    let Some(embed) = k.dim(&key("patch_embed.proj.weight"), 0).or_else(|| k.dim(&key("blocks.0.attn.qkv.weight"), 1)) else {
        return Err("timm-style blocks without patch_embed.proj.weight".into());
    };
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
    let num_heads = heads_or_assumed(embed, &mut assumed, &mut notes);
    let layer_scale = ["ls1.gamma", "gamma1", "gamma_1"].into_iter().find(|n| k.has(&key(&format!("blocks.0.{n}"))));
    Ok(SourceConfig {
        embed_dim: embed,
        depth: k.count_indexed(&key("blocks.")),
        num_heads,
        patch_size: k.dim(&key("patch_embed.proj.weight"), 2).unwrap_or(16),
        pretrain_grid,
        pos_resize: PosResize::Bicubic,
        prefix_tokens: pos_prefix + registers,
        num_registers: registers,
        mlp_hidden: k.dim(&key("blocks.0.mlp.fc1.weight"), 0).unwrap_or(4 * embed),
        qkv: if k.has(&key("blocks.0.attn.qkv.bias")) { QkvStyle::FusedBias } else { QkvStyle::FusedNoBias },
        layer_scale: layer_scale.map(str::to_string),
        rel_pos: RelPos::None,
        activation: Activation::Gelu,
        layernorm_eps: 1e-6,
        pre_norm: None,
        assumed,
        prefix: p.to_string(),
        notes,
    })
}
