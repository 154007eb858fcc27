//! `comer-port run`, `presets` and `bench` end to end (issue 3).

use candle_core::Device;

use crate::util::{bin, fixture};

fn scratch(name: &str) -> std::path::PathBuf {
    let d = crate::util::scratch_root().join(format!("cli-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_writes_outputs_and_taps_matching_upstream_and_refuses_overwrite() {
    let dir = fixture("forward/det_tiny");
    let out = scratch("run").join("out.safetensors");
    let args = |force: bool| {
        let mut c = bin();
        c.arg("run")
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--config")
            .arg(dir.join("case.json"))
            .arg("--input")
            .arg(dir.join("inputs.safetensors"))
            .arg("-o")
            .arg(&out)
            .arg("--taps");
        if force {
            c.arg("--force");
        }
        c
    };
    let st = args(false).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    for (k, e) in &expected {
        let g = got.get(k).unwrap_or_else(|| panic!("missing {k}"));
        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ev = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = ev.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = gv.iter().zip(&ev).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale, "{k}: {diff}");
    }
    // exists without --force: exit 4; with --force: ok
    let st = args(false).output().unwrap();
    assert_eq!(st.status.code(), Some(4));
    assert!(args(true).output().unwrap().status.success());
}

#[test]
fn run_rejects_input_not_divisible_by_32() {
    let dir = fixture("forward/det_tiny");
    let tmp = scratch("bad-size");
    let input = tmp.join("in.safetensors");
    let t = candle_core::Tensor::zeros((1, 3, 48, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("img".to_string(), t)]), &input).unwrap();
    let st = bin()
        .arg("run")
        .arg("--weights")
        .arg(dir.join("weights.safetensors"))
        .arg("--config")
        .arg(dir.join("case.json"))
        .arg("--input")
        .arg(&input)
        .arg("-o")
        .arg(tmp.join("o.safetensors"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&st.stderr).contains("divisible by 32"));
}

#[test]
fn presets_lists_all_six_with_sources() {
    let st = bin().args(["presets", "--json"]).output().unwrap();
    assert!(st.status.success());
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for n in ["vit-comer-t-seg", "vit-comer-s-seg", "vit-comer-b-seg", "vit-comer-s-det-dinov2", "vit-comer-b-det-dinov2", "beit-comer-l-codetr"] {
        assert!(names.contains(&n), "{n}");
    }
    assert!(v[0]["source"].as_str().unwrap().contains("Traffic-X"));
}

#[test]
fn bench_json_reports_median() {
    let st = bin().args(["bench", "--preset", "vit-comer-t-seg", "--size", "64", "--runs", "1", "--json"]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["median_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn run_takes_an_image_and_config_from_metadata_and_renders_viz() {
    let dir = fixture("forward/det_tiny");
    let tmp = scratch("image");
    // weights re-written with the config in metadata (float tensors only: buffers optional)
    let w = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, t) in &w {
        if t.dtype() == candle_core::DType::F32 {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            owned.push((k.clone(), t.dims().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(k, s, b)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let case = std::fs::read_to_string(dir.join("case.json")).unwrap();
    let meta = std::collections::HashMap::from([("comer_port.config".to_string(), case)]);
    let weights = tmp.join("w.safetensors");
    std::fs::write(&weights, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    // a 70×50 image → resized to 64×64
    let img = image::RgbImage::from_fn(70, 50, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 128]));
    let png = tmp.join("in.png");
    img.save(&png).unwrap();
    let out = tmp.join("o.safetensors");
    let viz = tmp.join("viz.png");
    let st = bin()
        .arg("run")
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&png)
        .arg("-o")
        .arg(&out)
        .arg("--viz")
        .arg(&viz)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(got["image.out.f1"].dims(), &[1, 48, 16, 16]);
    assert_eq!(got["image.out.f4"].dims(), &[1, 48, 2, 2]);
    let v = image::open(&viz).unwrap();
    assert_eq!((v.width(), v.height()), (64, 16));
}

/// `--preset` is checked by the argument parser in every subcommand that takes it: an unknown
/// name is a usage error (exit 2) listing the names, before any file is opened (the files
/// named here do not exist).
#[test]
fn unknown_preset_is_a_usage_error_in_every_subcommand() {
    let missing = "/nonexistent/comer-port/x.safetensors";
    let cases: [&[&str]; 5] = [
        &["import", missing, "--preset", "nope", "-o", "/nonexistent/comer-port/out.safetensors"],
        &["run", "--weights", missing, "--input", missing, "-o", "/nonexistent/o.safetensors", "--preset", "nope"],
        &["verify", missing, "--preset", "nope"],
        &["export", "onnx", missing, "-o", "/nonexistent/o.onnx", "--input-size", "64x64", "--preset", "nope"],
        &["bench", "--preset", "nope"],
    ];
    for args in cases {
        let st = bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(st.status.code(), Some(2), "{args:?}: {err}");
        for name in comer_port::model::presets::names() {
            assert!(err.contains(name), "{args:?}: lists {name}: {err}");
        }
        assert!(!err.contains("nonexistent/comer-port/x"), "{args:?}: no file was opened: {err}");
    }
    let st = bin().args(["verify", missing, "--preset", "vit-comer-t-seg"]).output().unwrap();
    assert_eq!(st.status.code(), Some(3), "a known preset passes the parser: {}", String::from_utf8_lossy(&st.stderr));
}
