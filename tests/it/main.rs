//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

mod util;
mod onnx_export;
