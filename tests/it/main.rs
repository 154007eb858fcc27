//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

/// Reference forward against upstream fixtures (issue 3).
mod forward;
mod util;
