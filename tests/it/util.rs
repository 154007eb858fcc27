//! Shared helpers for the integration tests: fixture paths, temp files, running the binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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

static N: AtomicUsize = AtomicUsize::new(0);

/// A fresh empty folder under the system temp dir, unique per call.
#[allow(dead_code)]
pub fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "comer-port-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Write `bytes` to a fresh temp file named `name`; returns its path.
#[allow(dead_code)]
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmpdir().join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

/// Files in the folder holding `p` (to assert nothing was written beside an input).
#[allow(dead_code)]
pub fn siblings(p: &Path) -> usize {
    std::fs::read_dir(p.parent().expect("parent")).map(|d| d.count()).unwrap_or(0)
}

/// `comer-port import sources/SRC --config CFG -o DIR/<src>.safetensors --force EXTRA…`,
/// asserted to succeed; returns the artifact's path.
pub fn import_source(src: &str, cfg: &Path, extra: &[&str], dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.safetensors", src.replace('/', "_")));
    let st = bin()
        .arg("import")
        .arg(fixture(&format!("sources/{src}")))
        .arg("--config")
        .arg(cfg)
        .arg("-o")
        .arg(&out)
        .arg("--force")
        .args(extra)
        .output()
        .expect("runs");
    assert!(st.status.success(), "import {src}: {}", String::from_utf8_lossy(&st.stderr));
    out
}
