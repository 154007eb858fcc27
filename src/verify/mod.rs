//! `verify/`: numerical proof that an import lost nothing (parity reports, round trips).

pub mod artifact;
pub mod compare;
pub mod error;
pub mod golden;
pub mod keys;
pub mod on_import;
pub mod parity;
pub mod source_vit;
pub mod target_vit;
pub mod vit;

pub use compare::{Check, Comparison, Report, compare};
pub use error::VerifyError;
pub use parity::{mapping_parity, seeded_images};
pub use source_vit::{SourceFamily, source_vit, source_vit_tokens};
pub use target_vit::{TargetFlavour, target_vit};
pub use vit::{Activation, PlainVit, Weights};
