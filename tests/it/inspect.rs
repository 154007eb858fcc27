//! `comer-port inspect`: the table, `--json` (one entry per tensor), `--all`,
//! `--check-finite` (exit 1 on NaN/Inf), and refused files: exit 3 with one stderr line.

use crate::util::{bin, fixture, import_source, temp_file, tmpdir};
use comer_port::formats::testkit::{torch_zip, Pickle};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().arg("inspect").args(args).output().expect("run comer-port");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn table_groups_blocks_and_names_the_family() {
    let f = fixture("sources/beitv2/beitv2_tiny_ft.pth");
    let (code, out, _) = run(&[f.to_str().expect("utf8")]);
    assert_eq!(code, 0);
    assert!(out.contains("format     torch-zip"), "{out}");
    assert!(out.contains("model.blocks.{0..3}.attn.qkv.weight"), "{out}");
    assert!(out.contains("family     beit"), "{out}");
    assert!(out.contains("sha256     "), "{out}");
    let (_, all, _) = run(&["--all", f.to_str().expect("utf8")]);
    assert!(all.contains("model.blocks.3.attn.qkv.weight"), "{all}");
}

#[test]
fn json_lists_every_tensor() {
    for (rel, n, family) in [
        ("sources/deit/deit_tiny_ddp_wrapped.pth", 56, "deit"),
        ("sources/clip/clip_tiny_quickgelu_visual_jit.pt", 56, "clip"),
        ("sources/hf_vit/vit-tiny-in21k", 72, "hf-vit"),
        ("sources/augreg/augreg_tiny.npz", 72, "augreg-npz"),
    ] {
        let f = fixture(rel);
        let (code, out, err) = run(&["--json", f.to_str().expect("utf8")]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert_eq!(v["family"], family, "{rel}");
        assert_eq!(v["tensors"].as_array().map(Vec::len), Some(n), "{rel}");
        assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
        assert!(v["config"]["embed_dim"] == 48, "{rel}");
        assert!(v["format"].is_string());
        let t = &v["tensors"][0];
        assert!(t["name"].is_string() && t["dtype"].is_string() && t["shape"].is_array());
    }
}

#[test]
fn check_finite_passes_on_clean_weights() {
    let f = fixture("sources/deit/deit_tiny.pth");
    let (code, out, _) = run(&["--check-finite", f.to_str().expect("utf8")]);
    assert_eq!(code, 0);
    assert!(out.contains("every value is finite"), "{out}");
}

#[test]
fn check_finite_reports_nan_and_inf_with_exit_1() {
    let pkl = Pickle::new().empty_dict().str("w").tensor("FloatStorage", "0", 4, 0, &[4], &[1]).setitem().stop();
    let data: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let p = temp_file("nan.pth", &torch_zip("nan", &pkl.0, "little", &[("0", &data)]));
    let (code, out, _) = run(&["--check-finite", p.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("w: 1 NaN, 1 Inf"), "{out}");
    let (code, out, _) = run(&["--check-finite", "--json", p.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["non_finite"][0]["nan"], 1);
}

/// A refused file: exit 3 and exactly one line on stderr naming the file and the reason.
fn refused(name: &str, bytes: &[u8], needle: &str) {
    let p = temp_file(name, bytes);
    let (code, out, err) = run(&[p.to_str().expect("utf8")]);
    assert_eq!(code, 3, "{name}: {err}");
    assert!(out.is_empty(), "{name}: nothing on stdout: {out}");
    assert_eq!(err.trim_end().lines().count(), 1, "{name}: one line: {err}");
    assert!(err.contains(name), "{name}: names the file: {err}");
    assert!(err.contains(needle), "{name}: names the reason ({needle}): {err}");
}

#[test]
fn cli_refuses_os_system() {
    let pkl = Pickle::new().global("os", "system").mark().str("id").tuple().reduce().stop();
    refused("evil.pth", &torch_zip("evil", &pkl.0, "little", &[]), "os.system");
}

#[test]
fn cli_refuses_a_png() {
    refused("photo.pth", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "PNG");
}

#[test]
fn cli_refuses_an_empty_file() {
    refused("empty.pth", b"", "empty");
}

#[test]
fn cli_refuses_a_view_past_its_storage() {
    let pkl = Pickle::new().empty_dict().str("w").tensor("FloatStorage", "0", 4, 2, &[4], &[1]).setitem().stop();
    refused("lie.pth", &torch_zip("lie", &pkl.0, "little", &[("0", &[0u8; 16])]), "storage");
}

#[test]
fn help_has_examples() {
    let out = bin().args(["inspect", "--help"]).output().expect("run");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("Examples:") && s.contains("--check-finite") && s.contains("--json"), "{s}");
}

/// One checkpoint hash: what `inspect` prints is what `import` records as
/// `comer_port.source_sha256`, for a file and for a Hugging Face folder (every file in it,
/// in name order, `config.json` included).
#[test]
fn sha256_is_the_hash_import_records() {
    let dir = tmpdir();
    let cfg = fixture("forward/det_tiny/case.json");
    for src in ["hf_vit/vit-tiny-in21k", "deit/deit_tiny.pth"] {
        let art = import_source(src, &cfg, &["--no-verify"], &dir);
        let recorded = comer_port::formats::open(&art).expect("artifact").metadata["comer_port.source_sha256"].clone();
        let f = fixture(&format!("sources/{src}"));
        let (code, out, err) = run(&["--json", f.to_str().expect("utf8")]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert_eq!(v["sha256"].as_str(), Some(recorded.as_str()), "{src}");
        let (_, table, _) = run(&[f.to_str().expect("utf8")]);
        assert!(table.contains(&format!("sha256     {recorded}  (")), "{src}: {table}");
    }
}
