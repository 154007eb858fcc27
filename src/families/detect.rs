//! Source-family detection from key patterns and shapes, and the source config it implies.
//!
//! Families are named exactly as `inspect` prints them. Detection looks at the state dict
//! (wrapper already stripped) and any metadata (HF `config.json`).

use crate::formats::TensorView;
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

/// Activation of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Gelu,
    QuickGelu,
}

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
}

/// Detection result: family, the implied config (None for `unknown`), and the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub family: Family,
    pub config: Option<SourceConfig>,
    /// Why this family was chosen, or why none fits.
    pub reason: String,
}

/// Detect the family of a state dict (wrapper stripped; keys as in the file otherwise).
pub fn detect(_state_dict: &[(String, &TensorView)], _metadata: &BTreeMap<String, String>) -> Detection {
    Detection {
        family: Family::Unknown,
        config: None,
        reason: "detection not implemented yet".into(),
    }
}
