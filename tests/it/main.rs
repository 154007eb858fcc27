//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

/// Reference forward against upstream fixtures (issue 3).
mod forward;
/// One test per `ModelError` variant (issue 3).
mod model_errors;
/// `comer-port run` / `presets` / `bench` end to end (issue 3).
mod run_cli;
mod util;
