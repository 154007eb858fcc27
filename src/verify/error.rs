//! `verify/error.rs`: the typed errors of the verify stage.
//!
//! A flat enum in the style of `safetensors/src/tensor.rs`: one doc comment per variant and
//! each variant carries the source or target key (or the check / block name) where the two
//! sides part, so a failing verify names the first offending tensor.

use crate::formats::FormatError;

/// Everything that stops a parity check or a source forward.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A tensor the forward needs is not in the checkpoint or artifact.
    #[error("tensor `{key}` is missing")]
    MissingTensor {
        /// The key.
        key: String,
    },

    /// A tensor has a shape the forward cannot use.
    #[error("tensor `{key}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The key.
        key: String,
        /// Its shape.
        got: Vec<usize>,
        /// What the forward needs.
        expected: String,
    },

    /// The input image or a position table does not fit the patch grid.
    #[error("`{key}`: {reason}")]
    Grid {
        /// The input or table.
        key: String,
        /// Why it does not fit.
        reason: String,
    },

    /// The two sides of a comparison part beyond the stated bound.
    #[error(
        "`{key}` parts at index {index:?}: max relative error {max_rel:.3e} > bound {bound:.1e}"
    )]
    Parted {
        /// The check or tensor.
        key: String,
        /// Multi-index of the first element that parts.
        index: Vec<usize>,
        /// The largest relative difference.
        max_rel: f64,
        /// The bound it was held to.
        bound: f64,
    },

    /// A tensor operation failed inside a block.
    #[error("tensor operation failed in `{block}`: {source}")]
    Tensor {
        /// The block (or step) it failed in.
        block: String,
        /// What candle reported.
        #[source]
        source: candle_core::Error,
    },

    /// The checkpoint could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// The ViT-CoMer forward refused the artifact or its config.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),

    /// A fixture folder or file is not what verify expects.
    #[error("{path}: {reason}")]
    Fixture {
        /// The fixture file or folder.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl VerifyError {
    /// Wrap a candle error with the block it came from.
    pub fn tensor(block: impl Into<String>) -> impl FnOnce(candle_core::Error) -> VerifyError {
        let block = block.into();
        move |source| VerifyError::Tensor { block, source }
    }
}

impl From<candle_core::Error> for VerifyError {
    fn from(source: candle_core::Error) -> Self {
        VerifyError::Tensor {
            block: String::new(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn missing_tensor_names_key() {
        let e = VerifyError::MissingTensor {
            key: "blocks.0.attn.qkv.weight".into(),
        };
        assert!(
            matches!(e, VerifyError::MissingTensor { ref key } if key == "blocks.0.attn.qkv.weight")
        );
        assert!(e.to_string().contains("blocks.0.attn.qkv.weight"));
    }

    #[test]
    fn shape_names_key() {
        let e = VerifyError::Shape {
            key: "pos_embed".into(),
            got: vec![1, 17, 48],
            expected: "(1, 10, 48)".into(),
        };
        assert!(matches!(e, VerifyError::Shape { ref key, .. } if key == "pos_embed"));
    }

    #[test]
    fn grid_names_key() {
        let e = VerifyError::Grid {
            key: "image".into(),
            reason: "smaller than one patch".into(),
        };
        assert!(matches!(e, VerifyError::Grid { ref key, .. } if key == "image"));
    }

    #[test]
    fn parted_names_key_and_index() {
        let e = VerifyError::Parted {
            key: "vit_tokens".into(),
            index: vec![0, 3, 7],
            max_rel: 1e-3,
            bound: 1e-5,
        };
        assert!(matches!(e, VerifyError::Parted { ref index, .. } if index == &[0, 3, 7]));
        assert!(e.to_string().contains("vit_tokens"));
    }

    #[test]
    fn tensor_error_names_block() {
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = a
            .matmul(&b)
            .map_err(VerifyError::tensor("blocks.2.attn"))
            .unwrap_err();
        assert!(matches!(e, VerifyError::Tensor { ref block, .. } if block == "blocks.2.attn"));
    }

    #[test]
    fn format_error_passes_through() {
        let path = std::path::Path::new("/nonexistent/verify/ckpt.safetensors");
        let e: VerifyError = crate::formats::open(path).unwrap_err().into();
        assert!(matches!(e, VerifyError::Format(_)));
    }
}
