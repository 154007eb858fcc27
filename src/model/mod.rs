//! `model/`: the reference forward pass in candle-core — the three upstream ViT-CoMer
//! flavours (`vit-comer-det`, `vit-comer-seg`, `beit-comer`), loaded by target state-dict
//! names, plus the numeric kernels they need.

pub(crate) mod buffer;
pub(crate) mod comer;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod kernels;
pub(crate) mod nn;
pub mod ops;
pub mod plain_vit;
pub mod layout;
pub mod presets;
pub mod profile;
pub mod resize;
pub(crate) mod vit;
pub(crate) mod weights;

pub use comer::{Comer, Outputs};
pub use config::{ComerConfig, ConfigError, Flavor, limits};
pub use nn::Activation;
pub use vit::relative_position_index;
pub use error::ModelError;
pub use weights::Store;
