//! comer-port: turn pretrained plain Vision Transformer checkpoints into ViT-CoMer backbones.
//!
//! Stages, one folder each (see `docs/ARCHITECTURE.md`):
//! `formats/` reads containers without executing code, `families/` detects the source family
//! and remaps it with the rules in `mappings/`, `model/` is the reference forward in
//! candle-core, `export/` writes safetensors / `.pth` / ONNX atomically, `verify/` proves
//! parity, `cli/` is the command line. Above the stages, `import/` chains them (plan → write →
//! verify → commit), `target.rs` resolves the target config and `meta.rs` is the metadata
//! every artifact records.

pub mod cli;
pub mod export;
pub mod families;
pub mod formats;
pub mod import;
pub mod meta;
pub mod model;
pub mod target;
pub mod verify;

/// Tool version recorded in every artifact's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
