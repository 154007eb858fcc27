//! `comer-port import` (issue 4): layouts against upstream's, every family, transforms
//! against the goldens, byte-identical reruns, refusals.

use crate::util::{bin, fixture};
use comer_port::families::mapping::{self, Origin, PlanOptions, Values};
use comer_port::import as pipeline;
use comer_port::formats::{self, DType, Storage, TensorView};
use comer_port::model::presets::{preset, preset_layout};
use comer_port::target::TargetSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tmp(name: &str) -> PathBuf {
    let d = crate::util::scratch_root().join(format!("import-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// (name, shape, dtype) of every tensor of a safetensors file, sorted by name.
fn layout_of(p: &Path) -> Vec<(String, Vec<usize>, DType)> {
    let ck = formats::open(p).expect("readable");
    let mut v: Vec<_> = ck.tensors().into_iter().map(|(k, t)| (k, t.shape.clone(), t.dtype)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn import(src: &str, case: &str, extra: &[&str], dir: &Path) -> PathBuf {
    crate::util::import_source(src, &fixture(&format!("forward/{case}/case.json")), extra, dir)
}

#[test]
fn deit_into_det_tiny_matches_upstream_layout() {
    let d = tmp("deit-det");
    let out = import("deit/deit_tiny.pth", "det_tiny", &[], &d);
    assert_eq!(layout_of(&out), layout_of(&fixture("forward/det_tiny/weights.safetensors")));
}

#[test]
fn beitv2_into_beit_tiny_matches_upstream_layout() {
    let d = tmp("beit");
    let want = layout_of(&fixture("forward/beit_tiny/weights.safetensors"));
    for src in ["beitv2/beitv2_tiny_ft.pth", "beitv2/beitv2_tiny_pt_shared_relpos.pth"] {
        assert_eq!(layout_of(&import(src, "beit_tiny", &[], &d)), want, "{src}");
    }
}

#[test]
fn every_family_pairs_with_a_tiny_config() {
    let d = tmp("families");
    let cases: &[(&str, &str, &[&str])] = &[
        ("deit/deit_tiny_legacy.pth", "seg_tiny", &[]),
        ("deit/deit_tiny_fp16.pth", "det_tiny_cfi_window", &[]),
        ("deit/deit_tiny_ddp_wrapped.pth", "det_tiny", &[]),
        ("deit/deit_tiny_distilled.pth", "det_tiny", &[]),
        ("mae/mae_tiny_pretrain.pth", "seg_tiny", &[]),
        ("dinov2/dinov2_tiny_vits14.pth", "det_tiny", &[]),
        ("dinov2/dinov2_tiny_vits14_reg4.pth", "det_tiny", &["--lossy"]),
        ("clip/clip_tiny_gelu.pt", "det_tiny", &["--lossy"]),
        ("clip/clip_tiny_quickgelu.pt", "seg_tiny", &["--lossy"]),
        ("clip/clip_tiny_quickgelu_visual_jit.pt", "det_tiny", &["--lossy"]),
        ("uniperceiver/uniperceiver_tiny_pretrained.pth", "det_tiny", &["--lossy"]),
        ("hf_vit/vit-tiny-in21k", "det_tiny", &[]),
        ("augreg/augreg_tiny.npz", "det_tiny", &[]),
        ("beitv2/beitv2_tiny_ft.pth", "det_tiny", &["--lossy"]),
        ("deit/deit_tiny.pth", "beit_tiny", &["--lossy"]),
    ];
    for (src, case, extra) in cases {
        let out = import(src, case, extra, &d);
        let want = layout_of(&fixture(&format!("forward/{case}/weights.safetensors")));
        assert_eq!(layout_of(&out), want, "{src} -> {case}");
    }
}

#[test]
fn inexpressible_parts_are_refused_without_lossy() {
    for (src, case) in [
        ("dinov2/dinov2_tiny_vits14_reg4.pth", "det_tiny"),
        ("clip/clip_tiny_gelu.pt", "det_tiny"),
        ("uniperceiver/uniperceiver_tiny_pretrained.pth", "det_tiny"),
        ("beitv2/beitv2_tiny_ft.pth", "det_tiny"),
    ] {
        let d = tmp("refuse");
        let st = bin()
            .arg("import")
            .arg(fixture(&format!("sources/{src}")))
            .arg("--config")
            .arg(fixture(&format!("forward/{case}/case.json")))
            .arg("-o")
            .arg(d.join("x.safetensors"))
            .output()
            .expect("runs");
        assert_eq!(st.status.code(), Some(3), "{src}");
        assert!(String::from_utf8_lossy(&st.stderr).contains("--lossy"), "{src}");
    }
}

#[test]
fn copied_tensors_are_bit_identical() {
    let d = tmp("bits");
    let out = import("deit/deit_tiny.pth", "det_tiny", &[], &d);
    let src = formats::open(&fixture("sources/deit/deit_tiny.pth")).expect("source");
    let dst = formats::open(&out).expect("artifact");
    let (_, s) = src.state_dict();
    let s: HashMap<_, _> = s.into_iter().collect();
    let t: HashMap<_, _> = dst.tensors().into_iter().collect();
    for k in ["blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "patch_embed.proj.weight", "pos_embed"] {
        assert_eq!(s[k].to_le_bytes(), t[k].to_le_bytes(), "{k}");
    }
    // A source without layer scale gets the identity.
    assert!(t["blocks.0.gamma1"].to_f32().iter().all(|&v| v == 1.0));
}

#[test]
fn same_inputs_and_seed_give_identical_bytes() {
    let run = |dir: &Path, seed: &str| {
        let st = bin()
            .arg("import")
            .arg(fixture("sources/beitv2/beitv2_tiny_ft.pth"))
            .arg("--config")
            .arg(fixture("forward/beit_tiny/case.json"))
            .args(["-o", &dir.join("a.safetensors").to_string_lossy()])
            .args(["--pth", &dir.join("a.pth").to_string_lossy()])
            .args(["--seed", seed, "--report", &dir.join("r.json").to_string_lossy()])
            .output()
            .expect("runs");
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        (std::fs::read(dir.join("a.safetensors")).expect("st"), std::fs::read(dir.join("a.pth")).expect("pth"))
    };
    let (a, b, c) = (tmp("det-a"), tmp("det-b"), tmp("det-c"));
    let (sa, pa) = run(&a, "0");
    let (sb, pb) = run(&b, "0");
    let (sc, _) = run(&c, "1");
    assert_eq!(sa, sb);
    assert_eq!(pa, pb);
    assert_ne!(sa, sc);
    // The .pth reads back (our own reader) with the same tensors as the safetensors.
    let p = formats::open(&a.join("a.pth")).expect("pth readable");
    let s = formats::open(&a.join("a.safetensors")).expect("st readable");
    let pt: HashMap<_, _> = p.state_dict().1.into_iter().collect();
    let stt = s.tensors();
    assert_eq!(pt.len(), stt.len());
    for (k, v) in stt {
        assert_eq!(pt[k.as_str()].to_le_bytes(), v.to_le_bytes(), "{k}");
        assert_eq!(pt[k.as_str()].shape, v.shape, "{k}");
    }
    let meta = &s.metadata;
    for k in ["comer_port.version", "comer_port.source", "comer_port.source_sha256", "comer_port.family", "comer_port.flavor", "comer_port.config", "comer_port.seed", "comer_port.transforms"] {
        assert!(meta.contains_key(k), "{k} missing from {meta:?}");
    }
    let cfg: serde_json::Value = serde_json::from_str(&meta["comer_port.config"]).expect("json");
    assert_eq!(cfg["flavor"], "beit-comer");
    assert!(a.join("a.config.json").exists(), "the config is named after the artifact (issue 15)");
    assert!(!a.join("config.json").exists());
    assert!(a.join("r.txt").exists());
}

#[test]
fn existing_output_needs_force() {
    let d = tmp("force");
    let out = d.join("x.safetensors");
    std::fs::write(&out, b"keep").expect("write");
    // Nothing is written when a later output (here y.config.json) already exists either.
    let d2 = tmp("force-late");
    std::fs::write(d2.join("y.config.json"), b"mine").expect("write");
    let st = bin()
        .arg("import")
        .arg(fixture("sources/deit/deit_tiny.pth"))
        .args(["--config", &fixture("forward/det_tiny/case.json").to_string_lossy()])
        .arg("-o")
        .arg(d2.join("y.safetensors"))
        .output()
        .expect("runs");
    assert_eq!(st.status.code(), Some(4), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(!d2.join("y.safetensors").exists(), "nothing written before the refusal");
    assert_eq!(std::fs::read(d2.join("y.config.json")).expect("read"), b"mine");
    let st = bin()
        .arg("import")
        .arg(fixture("sources/deit/deit_tiny.pth"))
        .arg("--config")
        .arg(fixture("forward/det_tiny/case.json"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    assert_eq!(st.status.code(), Some(4), "an existing output is an output error");
    assert_eq!(std::fs::read(&out).expect("read"), b"keep");
}

/// `import` needs a source (issue 15): without one it is a usage error and writes nothing,
/// not even in the current folder; the bundled fixture belongs to `demo`.
#[test]
fn no_argument_is_a_usage_error() {
    let d = tmp("bundled");
    let st = bin().arg("import").arg("-o").arg(d.join("b.safetensors")).current_dir(&d).output().expect("runs");
    assert_eq!(st.status.code(), Some(2), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(String::from_utf8_lossy(&st.stderr).contains("<SOURCE>"), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(std::fs::read_dir(&d).expect("dir").count(), 0, "nothing written");
}

#[test]
fn no_buffers_and_f16() {
    let d = tmp("nobuf");
    let out = import("beitv2/beitv2_tiny_ft.pth", "beit_tiny", &["--no-buffers", "--dtype", "f16"], &d);
    let l = layout_of(&out);
    assert!(l.iter().all(|(k, _, dt)| *dt == DType::F16 && !k.ends_with("relative_position_index") && !k.ends_with("num_batches_tracked")));
}

// ---- goldens ----

fn golden(rel: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let ck = formats::open(&fixture(rel)).expect("golden");
    ck.tensors().into_iter().map(|(k, t)| (k, (t.shape.clone(), t.to_f32()))).collect()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("golden {what}: max abs error {err:e}, relative to max {:e}", err / scale);
    assert!(err / scale <= rel, "{what}: max error {err} (scale {scale})");
}

#[test]
fn relpos_bicubic_matches_golden() {
    use comer_port::families::transforms::resize_relpos_bicubic;
    let g = golden("sources/beitv2/golden.safetensors");
    let src = formats::open(&fixture("sources/beitv2/beitv2_tiny_ft.pth")).expect("source");
    let (_, sd) = src.state_dict();
    let table = sd.iter().find(|(k, _)| k == "blocks.0.attn.relative_position_bias_table").expect("table").1.to_f32();
    for (name, w) in [("7to3", 2), ("7to5", 3), ("7to11", 6), ("7to111", 56)] {
        let (_, want) = &g[&format!("relpos_bicubic.block0.{name}")];
        let got = resize_relpos_bicubic(&table, 3, w).expect("resize");
        assert_close(&got, want, 1e-5, name);
    }
}

#[test]
fn relpos_geometric_matches_golden() {
    use comer_port::families::transforms::resize_relpos_geometric;
    let g = golden("sources/beitv2/golden.safetensors");
    let src = formats::open(&fixture("sources/beitv2/beitv2_tiny_ft.pth")).expect("source");
    let (_, sd) = src.state_dict();
    let table = sd.iter().find(|(k, _)| k == "blocks.0.attn.relative_position_bias_table").expect("table").1.to_f32();
    for (name, w) in [("4to6", 6), ("4to14", 14)] {
        let (_, want) = &g[&format!("relpos_geometric.block0.{name}")];
        let mut got = resize_relpos_geometric(&table, 3, w).expect("resize");
        got.extend_from_slice(&table[table.len() - 9..]);
        assert_close(&got, want, 1e-4, name);
    }
}

#[test]
fn dinov2_resizes_match_golden() {
    use comer_port::families::transforms::{resize_patch_bilinear, resize_pos_embed};
    let g = golden("sources/dinov2/golden.safetensors");
    let src = formats::open(&fixture("sources/dinov2/dinov2_tiny_vits14.pth")).expect("source");
    let (_, sd) = src.state_dict();
    let get = |k: &str| sd.iter().find(|(n, _)| n == k).expect(k).1.to_f32();
    let w = get("patch_embed.proj.weight");
    assert_close(&resize_patch_bilinear(&w, 48, 3, 14, 16), &g["patch_embed.proj.weight.bilinear_16"].1, 1e-5, "bilinear_16");
    let pinv = comer_port::families::transforms::resize_patch_pinv(&w, 48, 3, 14, 16).expect("pinv");
    assert_close(&pinv, &g["patch_embed.proj.weight.pi_resize_16"].1, 1e-5, "pi_resize_16");
    let pe = get("pos_embed");
    assert_close(&resize_pos_embed(&pe, 48, 1, 1, (4, 4), (6, 6)), &g["pos_embed.resize_4to6"].1, 1e-5, "4to6");
}

// ---- real presets from synthetic same-shaped sources ----

/// A source state dict in a family's layout, seeded values, built in memory.
fn synth(keys: &[(String, Vec<usize>)]) -> Vec<(String, TensorView)> {
    keys.iter()
        .enumerate()
        .map(|(i, (k, shape))| {
            let n: usize = shape.iter().product();
            let mut rng = comer_port::families::init::stream(7, k);
            let bytes: Vec<u8> = (0..n).flat_map(|_| ((rng.uniform() - 0.5) as f32 * 0.1 + i as f32 * 0.0).to_le_bytes()).collect();
            let st = Arc::new(Storage::Owned(bytes));
            (k.clone(), TensorView::contiguous(Path::new("synth"), k, DType::F32, shape.clone(), st).expect("view"))
        })
        .collect()
}

fn vit_keys(d: usize, depth: usize, patch: usize, grid: usize, beit: Option<usize>, ls: bool) -> Vec<(String, Vec<usize>)> {
    let mut k = vec![("cls_token".to_string(), vec![1, 1, d])];
    if beit.is_none() {
        k.push(("pos_embed".into(), vec![1, grid * grid + 1, d]));
    }
    k.push(("patch_embed.proj.weight".into(), vec![d, 3, patch, patch]));
    k.push(("patch_embed.proj.bias".into(), vec![d]));
    for i in 0..depth {
        let p = format!("blocks.{i}");
        for n in ["norm1", "norm2"] {
            k.push((format!("{p}.{n}.weight"), vec![d]));
            k.push((format!("{p}.{n}.bias"), vec![d]));
        }
        k.push((format!("{p}.attn.qkv.weight"), vec![3 * d, d]));
        if let Some(heads) = beit {
            k.push((format!("{p}.attn.q_bias"), vec![d]));
            k.push((format!("{p}.attn.v_bias"), vec![d]));
            k.push((format!("{p}.attn.relative_position_bias_table"), vec![27 * 27 + 3, heads]));
            k.push((format!("{p}.attn.relative_position_index"), vec![197, 197]));
            k.push((format!("{p}.gamma_1"), vec![d]));
            k.push((format!("{p}.gamma_2"), vec![d]));
        } else {
            k.push((format!("{p}.attn.qkv.bias"), vec![3 * d]));
        }
        if ls {
            k.push((format!("{p}.ls1.gamma"), vec![d]));
            k.push((format!("{p}.ls2.gamma"), vec![d]));
        }
        k.push((format!("{p}.attn.proj.weight"), vec![d, d]));
        k.push((format!("{p}.attn.proj.bias"), vec![d]));
        k.push((format!("{p}.mlp.fc1.weight"), vec![4 * d, d]));
        k.push((format!("{p}.mlp.fc1.bias"), vec![4 * d]));
        k.push((format!("{p}.mlp.fc2.weight"), vec![d, 4 * d]));
        k.push((format!("{p}.mlp.fc2.bias"), vec![d]));
    }
    k.push(("norm.weight".into(), vec![d]));
    k.push(("norm.bias".into(), vec![d]));
    k
}

fn check_preset(family: &str, preset_name: &str, keys: Vec<(String, Vec<usize>)>) {
    let owned = synth(&keys);
    let sd: Vec<(String, &TensorView)> = owned.iter().map(|(k, v)| (k.clone(), v)).collect();
    let f = comer_port::families::by_name(family).expect("family");
    let (_, _, plan) = pipeline::plan_state_dict(f, &sd, &Default::default(), &TargetSpec::Preset(preset_name.into()), &PlanOptions::default())
        .unwrap_or_else(|e| panic!("{preset_name}: {e}"));
    let got: Vec<(String, Vec<usize>)> = plan.targets.iter().map(|p| (p.entry.name.clone(), p.entry.shape.clone())).collect();
    let want: Vec<(String, Vec<usize>)> = preset_layout(preset_name).expect("layout").into_iter().map(|(n, s, _)| (n, s)).collect();
    assert_eq!(got, want, "{preset_name}");
    // Every ViT key comes from the source, and every planned tensor has its shape.
    let lookup: HashMap<&str, &TensorView> = sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for p in &plan.targets {
        let derived = p.entry.name.contains("relative_position_index") || p.entry.name.contains(".gamma");
        if p.entry.name.starts_with("blocks.") && !derived {
            assert!(matches!(p.origin, Origin::Source { .. }), "{} should come from the source", p.entry.name);
        }
        // Producing a 1.2 GB model is the benchmark's job; here the small and transformed ones.
        if p.entry.numel() < 300_000 || p.entry.name.contains("relative_position") || p.entry.name == "pos_embed" {
            let v = mapping::produce(p, &lookup, &PlanOptions::default(), 0).expect("produce");
            let n = match v {
                Values::F32(x) => x.len(),
                Values::I64(x) => x.len(),
            };
            assert_eq!(n, p.entry.numel(), "{}", p.entry.name);
        }
    }
    let _ = preset(preset_name).expect("preset");
}

#[test]
fn deit_s_into_vit_comer_s_seg() {
    check_preset("deit", "vit-comer-s-seg", vit_keys(384, 12, 16, 14, None, false));
}

#[test]
fn dinov2_b14_into_vit_comer_b_det_dinov2() {
    let mut k = vit_keys(768, 12, 14, 37, None, true);
    k.push(("mask_token".into(), vec![1, 768]));
    check_preset("dinov2", "vit-comer-b-det-dinov2", k);
}

#[test]
fn beitv2_large_into_beit_comer_l_codetr() {
    check_preset("beit", "beit-comer-l-codetr", vit_keys(1024, 24, 16, 14, Some(16), false));
}

#[test]
fn flavor_alone_infers_the_dimensions_from_the_source() {
    let d = tmp("flavor");
    for (src, flavor, extra) in [
        ("deit/deit_tiny.pth", "vit-comer-det", "--relpos-resize=bicubic"),
        ("beitv2/beitv2_tiny_pt_shared_relpos.pth", "beit-comer", "--relpos-resize=geometric"),
        ("dinov2/dinov2_tiny_vits14.pth", "vit-comer-seg", "--patch-resize=pinv"),
    ] {
        let out = d.join(format!("{flavor}.safetensors"));
        let st = bin()
            .arg("import")
            .arg(fixture(&format!("sources/{src}")))
            .args(["--flavor", flavor, extra, "--force", "-o"])
            .arg(&out)
            .output()
            .expect("runs");
        assert!(st.status.success(), "{src}: {}", String::from_utf8_lossy(&st.stderr));
        let ck = formats::open(&out).expect("artifact");
        let cfg: serde_json::Value = serde_json::from_str(&ck.metadata["comer_port.config"]).expect("config json");
        assert_eq!(cfg["flavor"], flavor);
        assert_eq!(cfg["constructor_kwargs"]["embed_dim"], 48);
        assert_eq!(cfg["constructor_kwargs"]["depth"], 4);
    }
    // A preset whose dimensions differ from the source is refused, naming the dimension.
    let st = bin()
        .arg("import")
        .arg(fixture("sources/deit/deit_tiny.pth"))
        .args(["--preset", "vit-comer-s-seg", "-o"])
        .arg(d.join("x.safetensors"))
        .output()
        .expect("runs");
    assert_eq!(st.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&st.stderr).contains("embed dim"));
}

fn verify_meta(p: &Path) -> serde_json::Value {
    let ck = formats::open(p).expect("readable");
    serde_json::from_str(&ck.metadata["comer_port.verify"]).expect("comer_port.verify is JSON")
}

#[test]
fn import_verifies_by_default_and_records_the_verdict() {
    let d = tmp("verify-default");
    let out = d.join("v.safetensors");
    let st = bin()
        .arg("import")
        .arg(fixture("sources/deit/deit_tiny.pth"))
        .args(["--config", &fixture("forward/det_tiny/case.json").to_string_lossy()])
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(stdout.contains("verdict: passed"), "{stdout}");
    let v = verify_meta(&out);
    assert_eq!(v["verdict"], "passed", "{v}");
    let names: Vec<&str> = v["checks"].as_array().expect("checks").iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("mapping parity")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("backbone f4")), "{names:?}");
    assert!(names.contains(&"round trip v.safetensors"), "named after the destination: {names:?}");

    let out2 = tmp("verify-off").join("n.safetensors");
    let st = bin()
        .arg("import")
        .arg(fixture("sources/deit/deit_tiny.pth"))
        .args(["--config", &fixture("forward/det_tiny/case.json").to_string_lossy()])
        .arg("-o")
        .arg(&out2)
        .arg("--no-verify")
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(verify_meta(&out2)["verdict"], "not run");
    // Only the verdict differs: the tensors are the same bytes.
    let (a, b) = (formats::open(&out).expect("a"), formats::open(&out2).expect("b"));
    for (k, t) in a.tensors() {
        let other = b.tensors().into_iter().find(|(n, _)| *n == k).expect("same keys").1.to_le_bytes();
        assert_eq!(t.to_le_bytes(), other, "{k}");
    }
}

#[test]
fn import_of_a_source_with_nan_fails_verify_names_it_and_records_it() {
    let d = tmp("verify-nan");
    let src = formats::open(&fixture("sources/deit/deit_tiny.pth")).expect("fixture");
    let (_, sd) = src.state_dict();
    let outs: Vec<comer_port::export::safetensors::OutTensor> = sd
        .iter()
        .map(|(k, t)| comer_port::export::safetensors::OutTensor { name: k.clone(), shape: t.shape.clone(), dtype: t.dtype })
        .collect();
    let bad = d.join("nan.pth");
    comer_port::export::pth::write_with_root(&bad, false, "model", &outs, &[], |i| {
        let mut b = sd[i].1.to_le_bytes();
        if sd[i].0 == "blocks.1.mlp.fc1.weight" {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Ok::<_, comer_port::export::atomic::WriteError>(b)
    })
    .expect("write");
    let out = d.join("nan.safetensors");
    let st = bin()
        .arg("import")
        .arg(&bad)
        .args(["--config", &fixture("forward/det_tiny/case.json").to_string_lossy()])
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "a failed verification is a failed check: {stderr}");
    assert!(stderr.contains("failed verification"), "{stderr}");
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(stdout.contains("blocks.1.mlp.fc1.weight: 1 non-finite values"), "counted while written: {stdout}");
    let v = verify_meta(&out);
    assert_eq!(v["verdict"], "failed", "{v}");
    assert!(v["first_failure"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

#[test]
fn import_and_inspect_name_the_same_family() {
    for src in [
        "deit/deit_tiny.pth",
        "deit/deit_tiny_legacy.pth",
        "mae/mae_tiny_pretrain.pth",
        "dinov2/dinov2_tiny_vits14.pth",
        "clip/clip_tiny_gelu.pt",
        "uniperceiver/uniperceiver_tiny_pretrained.pth",
        "hf_vit/vit-tiny-in21k",
        "augreg/augreg_tiny.npz",
        "beitv2/beitv2_tiny_ft.pth",
    ] {
        let path = fixture(&format!("sources/{src}"));
        let detected = comer_port::families::detect::detect_checkpoint(&formats::open(&path).expect("open")).family;
        let opts = pipeline::ImportOptions {
            target: TargetSpec::Flavor(
                if src.starts_with("beit") { comer_port::model::Flavor::Beit } else { comer_port::model::Flavor::Det },
                None,
            ),
            plan: PlanOptions { lossy: true, ..PlanOptions::default() },
            out: None,
            ..pipeline::ImportOptions::default()
        };
        let s = pipeline::run(&path, None, &opts).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(s.family, detected, "{src}");
    }
}
