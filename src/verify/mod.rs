//! `verify/`: numerical proof that an import lost nothing (parity reports, round trips).
//!
//! Module graph (no cycles): `policy` (bounds, fits, approximations, verdicts) and `compare`
//! are leaves; `target_vit` builds the artifact's ViT branch; `parity` runs two forwards;
//! `keys` checks the key set; `golden` runs fixture folders; `artifact` sequences every check
//! on a file; `libtorch` (cargo feature `libtorch`) adds `--libtorch`'s rows. The source families' own forwards come from `families/`, the plain-ViT blocks
//! from `model::plain_vit`.

#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod artifact;
pub(crate) mod compare;
pub(crate) mod error;
pub(crate) mod golden;
pub(crate) mod keys;
#[cfg(feature = "libtorch")]
pub mod libtorch;
pub mod parity;
pub mod policy;
pub mod target_vit;

pub use compare::{Check, Comparison, Report, compare};
pub use error::VerifyError;
pub use parity::{mapping_parity, seeded_images};
pub use target_vit::{TargetFlavour, target_vit};
