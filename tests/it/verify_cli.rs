//! `comer-port verify` end to end (issue 5): an imported DeiT passes with `--source`, a
//! tampered artifact fails with exit 1 naming the block, a forward fixture passes `--golden`.

use crate::util::{bin, fixture, import_source, tmpdir};
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

// ---- tampered artifacts, written with the project's own safetensors writer ----

/// One f32 tensor of an artifact: its name, shape and values.
type Edited = (String, Vec<usize>, Vec<f32>);

/// Rewrite `src` into `dst` (metadata kept) through `edit`, which sees every f32 tensor and
/// returns it changed (renamed, reshaped, new values) or as it was.
fn rewrite(src: &Path, dst: &Path, mut edit: impl FnMut(Edited) -> Edited) {
    use comer_port::export::safetensors::{OutTensor, write};
    let ck = comer_port::formats::open(src).expect("artifact");
    let mut outs = Vec::new();
    let mut bytes = Vec::new();
    for (name, t) in ck.tensors() {
        if t.dtype == comer_port::formats::DType::F32 {
            let (n, shape, v) = edit((name, t.shape.clone(), t.to_f32()));
            assert_eq!(shape.iter().product::<usize>(), v.len(), "{n}");
            outs.push(OutTensor { name: n, shape, dtype: t.dtype });
            bytes.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        } else {
            outs.push(OutTensor { name, shape: t.shape.clone(), dtype: t.dtype });
            bytes.push(t.to_le_bytes());
        }
    }
    write::<comer_port::export::atomic::WriteError, Vec<u8>>(dst, true, &outs, &ck.metadata, |i| Ok(bytes[i].clone()))
        .expect("write tampered artifact");
}

/// `(r, c)` row-major → `(c, r)`.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    (0..c * r).map(|i| v[(i % r) * c + i / r]).collect()
}

/// Run verify on a tampered artifact: exit code, stdout, stderr.
fn verify_tampered(art: &Path, source: &str, config: Option<&Path>) -> (Option<i32>, String, String) {
    let mut cmd = bin();
    cmd.arg("verify").arg(art).arg("--source").arg(fixture(source));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn renamed_key_is_a_failed_check_naming_both_keys() {
    let d = tmpdir();
    let art = import_into(&d);
    let bad = d.join("renamed.safetensors");
    rewrite(&art, &bad, |(n, s, v)| {
        let n = if n == "blocks.1.attn.qkv.weight" { "blocks.1.attn.qkv.weights".into() } else { n };
        (n, s, v)
    });
    let (code, out, err) = verify_tampered(&bad, SOURCE, None);
    assert_eq!(code, Some(1), "not an error exit or a panic: {out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(all.contains("missing `blocks.1.attn.qkv.weight` (did you mean `blocks.1.attn.qkv.weights`?)"), "{all}");
    assert!(all.contains("unexpected `blocks.1.attn.qkv.weights`"), "{all}");
    // Parity names the missing key instead of stopping the run.
    assert!(out.contains("tensor `blocks.1.attn.qkv.weight` is missing"), "{out}");
}

#[test]
fn transposed_qkv_weight_is_named() {
    let d = tmpdir();
    let art = import_into(&d);
    let bad = d.join("qkv_t.safetensors");
    rewrite(&art, &bad, |(n, s, v)| {
        if n == "blocks.2.attn.qkv.weight" {
            let t = transpose(&v, s[0], s[1]);
            (n, vec![s[1], s[0]], t) // (C, 3C)
        } else {
            (n, s, v)
        }
    });
    let (code, out, err) = verify_tampered(&bad, SOURCE, None);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("`blocks.2.attn.qkv.weight` has shape [48, 144], upstream's layout [144, 48] (transposed?)"),
        "{err}"
    );
}

#[test]
fn transposed_square_proj_weight_parts_at_its_block() {
    let d = tmpdir();
    let art = import_into(&d);
    let bad = d.join("proj_t.safetensors");
    rewrite(&art, &bad, |(n, s, v)| {
        if n == "blocks.2.attn.proj.weight" {
            let t = transpose(&v, s[0], s[1]);
            (n, s, t) // (C, C): same shape, so only parity can see it
        } else {
            (n, s, v)
        }
    });
    let (code, out, err) = verify_tampered(&bad, SOURCE, None);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("target keys") && !out.contains("target keys  FAILED"), "{out}");
    assert!(err.contains("first parts after blocks.2"), "{err}");
}

/// A `((2w-1)^2, heads)` table with its `(2w-1) x (2w-1)` grid changed by `f(grid, side)`.
fn per_head(v: &[f32], heads: usize, f: impl Fn(&[f32], usize) -> Vec<f32>) -> Vec<f32> {
    let side = ((v.len() / heads) as f64).sqrt().round() as usize;
    let mut out = vec![0.0; v.len()];
    for h in 0..heads {
        let grid: Vec<f32> = (0..side * side).map(|i| v[i * heads + h]).collect();
        for (i, x) in f(&grid, side).into_iter().enumerate() {
            out[i * heads + h] = x;
        }
    }
    out
}

/// Nearest-neighbour resize of a square grid (the wrong filter for a relative-position table).
fn nearest(g: &[f32], s: usize, t: usize) -> Vec<f32> {
    let idx = |o: usize| ((o as f64 + 0.5) * s as f64 / t as f64).floor().min((s - 1) as f64) as usize;
    (0..t * t).map(|i| g[idx(i / t) * s + idx(i % t)]).collect()
}

#[test]
fn beit_relative_position_table_resized_the_wrong_way_parts_at_its_block() {
    let d = tmpdir();
    // Global attention everywhere (window 4 = 64/16), so parity runs on every block.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("forward/beit_tiny/case.json")).expect("case")).expect("json");
    cfg["constructor_kwargs"]["window_attn"] = serde_json::json!([false, false, false, false]);
    cfg["constructor_kwargs"]["window_size"] = serde_json::json!([4, 4, 4, 4]);
    let cfg_path = d.join("beit_global.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let beit = "sources/beitv2/beitv2_tiny_ft.pth";
    let art = d.join("beit.safetensors");
    let st = bin().arg("import").arg(fixture(beit)).arg("--config").arg(&cfg_path).arg("-o").arg(&art).output().expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (code, out, err) = verify_tampered(&art, beit, None);
    assert_eq!(code, Some(0), "the untampered artifact passes: {out}\n{err}");

    type Wrong = fn(&[f32], usize) -> Vec<f32>;
    let wrongs: [(&str, Wrong); 2] = [
        // dy and dx swapped: the grid transposed.
        ("transposed", |g, s| transpose(g, s, s)),
        // Through a 5x5 grid and back with nearest neighbours.
        ("nearest", |g, s| nearest(&nearest(g, s, 5), 5, s)),
    ];
    for (what, wrong) in wrongs {
        let bad = d.join(format!("relpos_{what}.safetensors"));
        rewrite(&art, &bad, |(n, s, v)| {
            if n == "blocks.1.attn.relative_position_bias_table" {
                let t = per_head(&v, s[1], wrong);
                (n, s, t)
            } else {
                (n, s, v)
            }
        });
        let (code, out, err) = verify_tampered(&bad, beit, None);
        assert_eq!(code, Some(1), "{what}: {out}\n{err}");
        assert!(err.contains("first parts after blocks.1"), "{what}: {err}");
    }
}

#[test]
fn beit_windowed_table_resized_the_wrong_way_fails_its_golden() {
    // beit_tiny's windowed blocks get block 0's 7x7 table resized to 3x3 at import: parity
    // has no reference there, the relpos_bicubic golden does.
    let d = tmpdir();
    let beit = "sources/beitv2/beitv2_tiny_ft.pth";
    let art = d.join("beit.safetensors");
    let st = bin()
        .arg("import")
        .arg(fixture(beit))
        .arg("--config")
        .arg(fixture("forward/beit_tiny/case.json"))
        .arg("-o")
        .arg(&art)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let golden = |a: &Path| {
        bin().arg("verify").arg(a).arg("--source").arg(fixture(beit)).arg("--golden").arg(fixture("sources/beitv2")).output().expect("runs")
    };
    let ok = golden(&art);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{text}");
    assert!(text.contains("golden beitv2 relpos_bicubic.block0.7to3"), "{text}");
    let bad = d.join("relpos_nearest.safetensors");
    rewrite(&art, &bad, |(n, s, v)| {
        if n == "blocks.0.attn.relative_position_bias_table" {
            let t = per_head(&v, s[1], |g, s| nearest(&nearest(g, s, 2), 2, s));
            (n, s, t)
        } else {
            (n, s, v)
        }
    });
    let out = golden(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("relpos_bicubic.block0.7to3"));
}

#[test]
fn size_adds_parity_images_and_is_checked() {
    let d = tmpdir();
    let src = fixture("sources/deit/deit_tiny.pth");
    let art = import_source("deit/deit_tiny.pth", &fixture("forward/seg_tiny/case.json"), &[], &d);
    let verify = |extra: &[&str]| bin().arg("verify").arg(&art).arg("--source").arg(&src).args(extra).output().expect("runs");
    let out = verify(&["--size", "32x96", "--size", "128x64"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for size in ["32x96", "128x64"] {
        let row = text.lines().find(|l| l.starts_with(&format!("mapping parity image{size} "))).unwrap_or_default();
        assert!(row.ends_with("exact"), "{size}: {text}");
    }
    for bad in ["30x96", "0x64", "64", "64x99999"] {
        let out = verify(&["--size", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad), "{bad}");
    }
    // A windowed BEiT target computes the source's function on one grid only: skipped, named.
    let beit = fixture("sources/beitv2/beitv2_tiny_ft.pth");
    let art = import_source("beitv2/beitv2_tiny_ft.pth", &fixture("forward/beit_tiny/case.json"), &[], &d);
    let out = bin().arg("verify").arg(&art).arg("--source").arg(&beit).args(["--size", "64x64"]).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let row = text.lines().find(|l| l.starts_with("mapping parity image64x64")).unwrap_or_default();
    assert!(row.ends_with("skipped"), "{text}");
}
