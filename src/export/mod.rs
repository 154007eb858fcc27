//! `export/`: write artifacts — safetensors with metadata, torch.save-compatible `.pth`,
//! ONNX — always to a temporary file in the destination folder, renamed into place when
//! complete, never overwriting without `force`; `outputs` checks every output of a command
//! against the others and against its inputs before the first is written.

pub mod atomic;
pub mod outputs;
pub(crate) mod direct;
pub mod pth;
pub mod safetensors;
pub mod onnx;
