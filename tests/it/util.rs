//! Shared helpers for the integration tests: fixture paths, running the binary.

use std::path::PathBuf;
use std::process::Command;

/// Path under the project's own `fixtures/` folder.
#[allow(dead_code)]
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// The built `comer-port` binary.
#[allow(dead_code)]
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_comer-port"))
}
