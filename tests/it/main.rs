//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

// Source-family ViT forwards against the sources goldens; mapping parity (issue 5).
mod source_forward;
mod util;
