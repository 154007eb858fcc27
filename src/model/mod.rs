//! `model/`: the reference forward pass in candle-core — the three upstream ViT-CoMer
//! flavours (`vit-comer-det`, `vit-comer-seg`, `beit-comer`), loaded by target state-dict
//! names, plus the numeric kernels they need.

pub mod buffer;
pub mod comer;
pub mod config;
pub mod error;
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod layout;
pub mod presets;
pub mod profile;
pub mod resize;
pub mod vit;
pub mod weights;

pub use comer::{Comer, Outputs};
pub use config::{ComerConfig, ConfigError, Flavor};
pub use nn::Activation;
pub use error::ModelError;
pub use weights::Store;
