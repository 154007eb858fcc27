//! `comer-port demo` end to end: the whole pipeline on the bundled fixture writes every file
//! it lists, verify passes, and a non-empty folder is refused without `--force`.

use crate::util::{bin, tmpdir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file in `dir` (one level) with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let bytes = std::fs::read(&p).expect("read file");
            (p, bytes)
        })
        .collect()
}

fn demo_json(dir: &Path, force: bool) -> std::process::Output {
    let mut c = bin();
    c.arg("demo").arg("--dir").arg(dir).arg("--json");
    if force {
        c.arg("--force");
    }
    c.output().expect("runs")
}

#[test]
fn demo_writes_every_listed_file_and_verify_passes() {
    let d = tmpdir();
    let out = demo_json(&d, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&text).expect("one JSON object on stdout");
    assert_eq!(j["passed"], true);
    assert_eq!(j["verify"]["passed"], true, "{}", j["verify"]);
    let dir = PathBuf::from(j["dir"].as_str().expect("dir"));
    assert_eq!(dir, d.canonicalize().expect("canonical"));

    let steps: Vec<&str> = j["steps"].as_array().expect("steps").iter().map(|s| s["name"].as_str().expect("name")).collect();
    assert_eq!(steps, ["inspect", "import", "verify", "run", "export"]);
    assert_eq!(j["steps"][0]["figures"]["family"], "deit");
    assert_eq!(j["steps"][1]["figures"]["flavor"], "vit-comer-det");
    assert_eq!(j["steps"][1]["figures"]["seed"], 0);

    let files: Vec<PathBuf> = j["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("path")))
        .collect();
    for f in &files {
        assert!(f.starts_with(&dir), "{} outside {}", f.display(), dir.display());
        let len = std::fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).len();
        assert!(len > 0, "{} is empty", f.display());
    }
    let names: Vec<String> = files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    for want in [
        "deit_tiny.pth",
        "deit_tiny.comer.safetensors",
        "deit_tiny.comer.pth",
        "deit_tiny.comer.config.json",
        "import_report.json",
        "import_report.txt",
        "input.png",
        "pyramid.safetensors",
        "pyramid.png",
        "deit_tiny.comer.onnx",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not listed in {names:?}");
    }
    // Everything in the folder is listed: no stray temporary files.
    assert_eq!(contents(&dir).len(), files.len());
    // The PCA view: four pyramid levels side by side at the stride-4 size of the 64x64 image.
    let viz = image::open(dir.join("pyramid.png")).expect("png");
    assert_eq!((viz.width(), viz.height()), (64, 16));
}

#[test]
fn demo_refuses_a_non_empty_dir_without_force_and_changes_nothing() {
    let d = tmpdir();
    assert_eq!(demo_json(&d, false).status.code(), Some(0));
    let before = contents(&d);

    let out = demo_json(&d, false);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");
    assert_eq!(contents(&d), before, "a refused demo changed the folder");

    // A folder holding something else is refused too; --force uses it and keeps the stranger.
    let e = tmpdir();
    std::fs::write(e.join("notes.txt"), b"mine").expect("write");
    assert_eq!(demo_json(&e, false).status.code(), Some(4));
    assert_eq!(contents(&e).len(), 1);
    let out = demo_json(&e, true);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(e.join("notes.txt")).expect("kept"), b"mine");
}

#[test]
fn demo_refuses_a_dir_that_is_a_file() {
    let d = tmpdir();
    let f = d.join("file");
    std::fs::write(&f, b"x").expect("write");
    let out = bin().arg("demo").arg("--dir").arg(&f).output().expect("runs");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&f).expect("read"), b"x");
}

#[test]
fn demo_without_dir_uses_a_kept_temporary_folder_and_prints_the_steps() {
    let out = bin().arg("demo").output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("comer-port demo in "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no folder line in {text}"));
    assert!(dir.is_dir(), "{} not kept", dir.display());
    for (n, step) in ["inspect", "import", "verify", "run", "export"].iter().enumerate() {
        assert!(text.contains(&format!("[{}/5] {step}", n + 1)), "step {step} missing:\n{text}");
    }
    assert!(text.contains("verdict: passed"), "{text}");
    assert!(text.contains(&dir.join("deit_tiny.comer.onnx").display().to_string()), "{text}");
    assert!(text.contains("kept"), "{text}");
    // The test cleans up what the demo deliberately keeps.
    assert!(dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("comer-port-demo-")));
    std::fs::remove_dir_all(&dir).expect("remove demo folder");
}
