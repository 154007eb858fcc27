//! Errors of the reference forward: loading weights by target name and running the model.
//!
//! Mirrors what upstream's `load_state_dict(strict=True)` and its forward would refuse, made
//! early and named: missing/unexpected keys (with near-miss hints), shape and dtype
//! mismatches, input sizes the pyramid cannot take.

use crate::text::esc;
use std::path::PathBuf;

/// A key with an optional "did you mean" hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHint {
    pub key: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for KeyHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hint {
            Some(h) => write!(f, "{} (did you mean '{}'?)", esc(&self.key), esc(h)),
            None => write!(f, "{}", esc(&self.key)),
        }
    }
}

fn list(keys: &[KeyHint]) -> String {
    keys.iter().map(|k| format!("\n  {k}")).collect()
}

/// Why a model could not be built or run; weight errors name the key.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Target keys the model needs that the weights do not have.
    #[error("weights: {} missing key(s):{}", keys.len(), list(keys))]
    MissingKeys {
        /// Each missing key, with a near-miss among the unused keys as a hint.
        keys: Vec<KeyHint>,
    },
    /// Keys in the weights that the model does not use.
    #[error("weights: {} unexpected key(s):{}", keys.len(), list(keys))]
    UnexpectedKeys {
        /// Each unused key, with a near-miss among the keys the model read as a hint.
        keys: Vec<KeyHint>,
    },
    /// A tensor whose shape differs from what the config implies.
    #[error("weights: '{name}' has shape {got:?}, the config needs {expected:?}", name = esc(.name))]
    Shape {
        /// The key.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the weights.
        got: Vec<usize>,
    },
    /// A tensor of the wrong element type.
    #[error("weights: '{name}' is {got}, expected {expected}", name = esc(.name), got = esc(.got), expected = esc(.expected))]
    Dtype {
        /// The key.
        name: String,
        /// The element type needed.
        expected: String,
        /// The element type in the weights.
        got: String,
    },
    /// A stored `relative_position_index` buffer that differs from the computed one.
    #[error("weights: '{name}' differs from the index upstream computes for its window", name = esc(.name))]
    RelativePositionIndex {
        /// The key.
        name: String,
    },
    /// Input height or width not divisible by 32 (the stride-32 pyramid level).
    #[error("input '{name}': {h}×{w} is not divisible by 32 (resize or pad the image)", name = esc(.name))]
    InputSize {
        /// The input's name.
        name: String,
        /// Its height.
        h: usize,
        /// Its width.
        w: usize,
    },
    /// Input tensor that is not (B, in_chans, H, W) float32.
    #[error("input '{name}': shape {shape:?} is not (B, {in_chans}, H, W)", name = esc(.name))]
    InputShape {
        /// The input's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The channels the config expects.
        in_chans: usize,
    },
    /// A global (non-windowed) BEiT block whose relative-position window is not the token grid.
    #[error("block {block}: global attention with a {window}×{window} relative-position table needs a {window}×{window} token grid, got {h}×{w}")]
    GlobalWindow {
        /// The block index.
        block: usize,
        /// The table's window side.
        window: usize,
        /// Token grid height.
        h: usize,
        /// Token grid width.
        w: usize,
    },
    /// Reading a weights or input file failed.
    #[error("{path}: {message}", path = esc(.path), message = esc(.message))]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it reported.
        message: String,
    },
    /// The config cannot describe a working model.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// A tensor operation failed.
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Levenshtein distance, for near-miss hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a third of the key's length, if any.
pub fn near_miss<'a>(key: &str, candidates: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let limit = (key.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// Everything that stops a plain-ViT forward from loading or running.
#[derive(Debug, thiserror::Error)]
pub enum VitError {
    /// A tensor the forward needs is not in the checkpoint or artifact.
    #[error("tensor `{key}` is missing", key = esc(.key))]
    MissingTensor {
        /// The missing key.
        key: String,
    },

    /// A tensor of a mapped artifact could not be read (a dtype candle does not hold).
    #[error("tensor `{key}` cannot be read: {reason}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },

    /// A tensor has a shape the forward cannot use.
    #[error("tensor `{key}` has shape {got:?}, expected {expected}", key = esc(.key), expected = esc(.expected))]
    Shape {
        /// The offending key.
        key: String,
        /// Its shape.
        got: Vec<usize>,
        /// What the forward needs.
        expected: String,
    },

    /// The input image or a position table does not fit the patch grid.
    #[error("`{key}`: {reason}", key = esc(.key), reason = esc(.reason))]
    Grid {
        /// `image` or the position table's key.
        key: String,
        /// Why it does not fit.
        reason: String,
    },

    /// A tensor operation failed inside a block.
    #[error("tensor operation failed in `{block}`: {source}", block = esc(.block))]
    Tensor {
        /// The block (or key) it failed in; empty until named.
        block: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
}

impl VitError {
    /// Wrap a candle error with the block it came from.
    pub fn tensor(block: impl Into<String>) -> impl FnOnce(candle_core::Error) -> VitError {
        let block = block.into();
        move |source| VitError::Tensor { block, source }
    }
}

impl From<candle_core::Error> for VitError {
    fn from(source: candle_core::Error) -> Self {
        VitError::Tensor { block: String::new(), source }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_miss_finds_close_names() {
        let cands = vec!["blocks.0.attn.qkv.weight".to_string(), "spm.fc1.bias".to_string()];
        assert_eq!(near_miss("blocks.0.attn.qkv.weigth", &cands).as_deref(), Some("blocks.0.attn.qkv.weight"));
        assert_eq!(near_miss("level_embed", &cands), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn messages_list_keys_with_hints() {
        let e = ModelError::MissingKeys {
            keys: vec![KeyHint { key: "a.weight".into(), hint: Some("a.weigth".into()) }],
        };
        assert!(e.to_string().contains("did you mean 'a.weigth'"));
    }
}

#[cfg(test)]
mod error_tests {
    use super::VitError;
    use candle_core::{Device, Tensor};

    #[test]
    fn missing_tensor_names_key() {
        let e = VitError::MissingTensor { key: "blocks.0.attn.qkv.weight".into() };
        assert!(matches!(e, VitError::MissingTensor { ref key } if key == "blocks.0.attn.qkv.weight"));
        assert!(e.to_string().contains("blocks.0.attn.qkv.weight"));
    }

    #[test]
    fn unreadable_names_key() {
        let e = VitError::Unreadable { key: "pos_embed".into(), reason: "I32".into() };
        assert!(e.to_string().contains("`pos_embed` cannot be read: I32"));
    }

    #[test]
    fn shape_names_key() {
        let e = VitError::Shape { key: "pos_embed".into(), got: vec![1, 17, 48], expected: "(1, 10, 48)".into() };
        assert!(matches!(e, VitError::Shape { ref key, .. } if key == "pos_embed"));
    }

    #[test]
    fn grid_names_key() {
        let e = VitError::Grid { key: "image".into(), reason: "smaller than one patch".into() };
        assert!(matches!(e, VitError::Grid { ref key, .. } if key == "image"));
    }

    #[test]
    fn tensor_error_names_block() {
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = a.matmul(&b).map_err(VitError::tensor("blocks.2.attn")).unwrap_err();
        assert!(matches!(e, VitError::Tensor { ref block, .. } if block == "blocks.2.attn"));
    }
}
