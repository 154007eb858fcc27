//! `export/`: write artifacts — safetensors with metadata, torch.save-compatible `.pth`,
//! ONNX — always to a temporary file in the destination folder, renamed into place when
//! complete, never overwriting without `force`.

pub mod atomic;
pub(crate) mod direct;
pub mod pth;
pub mod safetensors;
pub mod onnx;
