//! comer-port: turn pretrained plain Vision Transformer checkpoints into ViT-CoMer backbones.
//!
//! Stages, one folder each (see `docs/ARCHITECTURE.md`):
//! `formats/` reads containers without executing code, `families/` detects the source family
//! and remaps it with the rules in `mappings/`, `model/` is the reference forward in
//! candle-core, `export/` writes safetensors / `.pth` / ONNX atomically, `verify/` proves
//! parity. Beside them: `target` resolves which configuration an artifact targets (one
//! resolver for every subcommand), `error` classifies the stages' typed errors for callers
//! that report them, `text` escapes untrusted strings (key and file names) for printing. The
//! command line (`src/cli/`) belongs to the `comer-port` binary, not to this library. With the
//! opt-in cargo feature `libtorch`, `libtorch/` reads trusted files a second time through
//! PyTorch itself (docs/libtorch.md).

#![deny(missing_docs)]

pub mod error;
pub mod export;
pub mod families;
pub mod formats;
pub mod import;
#[cfg(feature = "libtorch")]
pub mod libtorch;
pub mod meta;
pub mod model;
pub mod progress;
pub mod target;
pub mod text;
pub mod verify;

/// Tool version recorded in every artifact's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
