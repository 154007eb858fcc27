//! `verify/`: numerical proof that an import lost nothing (parity reports, round trips).

#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod artifact;
pub(crate) mod compare;
pub(crate) mod error;
pub(crate) mod golden;
pub(crate) mod keys;
pub(crate) mod on_import;
pub mod parity;
pub(crate) mod resize;
#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod source_vit;
pub mod target_vit;
pub mod vit;

pub use compare::{Check, Comparison, Report, compare};
pub use error::VerifyError;
pub use parity::{mapping_parity, seeded_images};
pub use source_vit::{SourceFamily, source_vit, source_vit_tokens};
pub use target_vit::{TargetFlavour, target_vit};
pub use vit::{Activation, PlainVit, Weights};
