//! `verify/error.rs`: the typed errors of the verify stage.
//!
//! A flat enum in the style of `safetensors/src/tensor.rs`: one doc comment per variant and
//! each variant carries the source or target key (or the check / block name) where the two
//! sides part, so a failing verify names the first offending tensor.

use crate::text::esc;
use crate::formats::FormatError;

/// Everything that stops a parity check or a source forward.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A plain-ViT forward (the source family's or the artifact's ViT branch) could not load
    /// or run: names the key, the block or the image.
    #[error(transparent)]
    Vit(#[from] crate::model::plain_vit::VitError),

    /// The two sides of a comparison part beyond the stated bound.
    #[error(
        "`{key}` parts at index {index:?}: max relative error {max_rel:.3e} > bound {bound:.1e}{also}", key = esc(.key), also = esc(.also)
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
        /// The other checks that failed (`; also failed: …`), or empty.
        also: String,
    },

    /// A check without a second side to measure against (the key set, fresh or mapped
    /// tensors bit for bit, finiteness) failed: names it and why, with no figures.
    #[error("`{key}` failed{also}", key = esc(.key), also = esc(.also))]
    Failed {
        /// The check, with what it found.
        key: String,
        /// The other checks that failed (`; also failed: …`), or empty.
        also: String,
    },

    /// The checkpoint could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// The ViT-CoMer forward refused the artifact or its config.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),

    /// A fixture folder or file is not what verify expects.
    #[error("{path}: {reason}", path = esc(.path), reason = esc(.reason))]
    Fixture {
        /// The fixture file or folder.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<candle_core::Error> for VerifyError {
    fn from(source: candle_core::Error) -> Self {
        VerifyError::Vit(source.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parted_names_key_and_index() {
        let e = VerifyError::Parted {
            key: "vit_tokens".into(),
            index: vec![0, 3, 7],
            max_rel: 1e-3,
            bound: 1e-5,
            also: String::new(),
        };
        assert!(matches!(e, VerifyError::Parted { ref index, .. } if index == &[0, 3, 7]));
        assert!(e.to_string().contains("vit_tokens"));
    }

    #[test]
    fn vit_error_passes_through() {
        let e: VerifyError = crate::model::plain_vit::VitError::MissingTensor { key: "pos_embed".into() }.into();
        assert!(matches!(e, VerifyError::Vit(_)));
        assert!(e.to_string().contains("pos_embed"));
    }

    #[test]
    fn format_error_passes_through() {
        let path = std::path::Path::new("/nonexistent/verify/ckpt.safetensors");
        let e: VerifyError = crate::formats::open(path).unwrap_err().into();
        assert!(matches!(e, VerifyError::Format(_)));
    }
}
