//! `comer-port verify` end to end (issue 5): an imported DeiT passes with `--source`, a
//! tampered artifact fails with exit 1 naming the block, a forward fixture passes `--golden`.

use crate::util::{bin, fixture, tmpdir};
use std::path::{Path, PathBuf};

const SOURCE: &str = "sources/deit/deit_tiny.pth";
const CASE: &str = "forward/det_tiny/case.json";

fn import_into(dir: &Path) -> PathBuf {
    let out = dir.join("deit.safetensors");
    let st = bin()
        .arg("import")
        .arg(fixture(SOURCE))
        .arg("--config")
        .arg(fixture(CASE))
        .arg("-o")
        .arg(&out)
        .arg("--pth")
        .arg(dir.join("deit.pth"))
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    out
}

/// Rewrite `src` into `dst` with `key` perturbed by `delta` (metadata kept).
fn tamper(src: &Path, dst: &Path, key: &str, delta: f32) {
    let bytes = std::fs::read(src).expect("read");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v) in st.tensors() {
        let mut data = v.data().to_vec();
        if name == key {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            for c in data.chunks_exact_mut(4) {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + delta;
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        owned.push((name, v.dtype(), v.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let out = safetensors::serialize(views, meta.metadata().clone()).expect("serialize");
    std::fs::write(dst, out).expect("write");
}

#[test]
fn imported_deit_passes_with_source() {
    let d = tmpdir();
    let art = import_into(&d);
    let out = bin().arg("verify").arg(&art).arg("--source").arg(fixture(SOURCE)).arg("--json").output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(j["passed"], true);
    let checks = j["checks"].as_array().expect("checks");
    let parity: Vec<_> = checks.iter().filter(|c| c["name"].as_str().unwrap_or("").starts_with("mapping parity")).collect();
    assert_eq!(parity.len(), 2, "pretrain and non-square sizes");
    for c in parity {
        assert!(c["max_rel"].as_f64().unwrap_or(1.0) <= 1e-5, "{c}");
        assert_eq!(c["bound"], 1e-5);
    }
    assert!(checks.iter().any(|c| c["name"] == "round trip deit.pth vs .safetensors" && c["passed"] == true));
    assert_eq!(checks.iter().filter(|c| c["name"].as_str().unwrap_or("").starts_with("backbone f")).count(), 4);
}

#[test]
fn tampered_artifact_fails_and_names_the_block() {
    let d = tmpdir();
    let art = import_into(&d);
    let bad = d.join("tampered.safetensors");
    tamper(&art, &bad, "blocks.1.mlp.fc1.weight", 1e-3);
    let out = bin()
        .arg("verify")
        .arg(&bad)
        .arg("--source")
        .arg(fixture(SOURCE))
        .arg("--config")
        .arg(fixture(CASE))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first parts after blocks.1"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}

#[test]
fn forward_fixture_passes_golden() {
    let out = bin()
        .arg("verify")
        .arg(fixture("forward/det_tiny/weights.safetensors"))
        .arg("--config")
        .arg(fixture(CASE))
        .arg("--golden")
        .arg(fixture("forward/det_tiny"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("golden input1.out.f4") && text.contains("verdict: passed"), "{text}");
}
