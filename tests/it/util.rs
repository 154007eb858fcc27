//! Shared helpers for the integration tests: fixture paths, temp files, running the binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
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

/// This test process's scratch folder, `target/tmp/it-<pid>` (Cargo's
/// `CARGO_TARGET_TMPDIR`, so nothing lands in the system temp dir). Created on first use,
/// which also removes the folders of earlier runs whose process has ended (on Linux, where
/// `/proc` tells): at most the last run's scratch is kept, to look at after a failure.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let proc_fs = Path::new("/proc/self").exists();
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ended = name.strip_prefix("it-").and_then(|pid| pid.parse::<u32>().ok()).is_some_and(|pid| {
                proc_fs && pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
            });
            if ended {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let root = base.join(format!("it-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("create the tests' scratch folder");
        root
    })
}

/// A fresh empty folder under [`scratch_root`], unique per call.
#[allow(dead_code)]
pub fn tmpdir() -> PathBuf {
    let d = scratch_root().join(N.fetch_add(1, Ordering::SeqCst).to_string());
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
