//! `model/`: the reference forward pass in candle-core — the three upstream ViT-CoMer
//! flavours and, for parity, the source families' own ViT forwards.

pub mod config;
pub mod layout;
pub mod presets;

pub use config::{ComerConfig, ConfigError, Flavor};
