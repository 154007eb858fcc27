//! Reference forward against upstream's own outputs (`fixtures/forward/*`, issue 3):
//! every output and every tap within 1e-4 · max(1, max|expected|).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use comer_port::model::{Comer, ComerConfig, Store};

use crate::util::fixture;

/// Returns the worst relative error over every compared tensor of the case.
fn check_case(case: &str) -> f32 {
    let dir = fixture(&format!("forward/{case}"));
    let cfg = ComerConfig::from_case_json(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let store = Store::from_safetensors(&dir.join("weights.safetensors")).unwrap();
    let model = Comer::new(&store.root(), &cfg).unwrap();
    store.finish().unwrap();
    let inputs = candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let mut worst = 0f32;
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut names: Vec<&String> = inputs.keys().collect();
    names.sort();
    for name in names {
        let out = model.forward(&inputs[name], name).unwrap();
        let mut got: HashMap<String, Tensor> = HashMap::new();
        for (i, f) in out.f.iter().enumerate() {
            got.insert(format!("{name}.out.f{}", i + 1), f.clone());
        }
        if let Some(x) = &out.x {
            got.insert(format!("{name}.out.x"), x.clone());
        }
        for (t, v) in &out.taps {
            got.insert(format!("{name}.{t}"), v.clone());
        }
        let mut keys: Vec<&String> = expected.keys().filter(|k| k.starts_with(&format!("{name}."))).collect();
        keys.sort();
        for key in keys {
            let exp = &expected[key];
            let g = got.get(key).unwrap_or_else(|| panic!("{case}: no output for {key}"));
            assert_eq!(g.dims(), exp.dims(), "{case}: shape of {key}");
            let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ev = exp.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = ev.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = gv.iter().zip(&ev).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let rel = diff / scale;
            if rel > 1e-4 {
                failures.push(format!("{key}: max |got-expected| = {diff} > 1e-4·{scale}"));
            }
            worst = worst.max(rel);
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{case}:\n{}", failures.join("\n"));
    assert!(checked > 0, "{case}: nothing compared");
    eprintln!("{case}: {checked} tensors, worst relative error {worst:.3e}");
    worst
}

#[test]
fn det_tiny_matches_upstream() {
    check_case("det_tiny");
}

#[test]
fn det_tiny_cfi_window_matches_upstream() {
    check_case("det_tiny_cfi_window");
}

#[test]
fn seg_tiny_matches_upstream() {
    check_case("seg_tiny");
}

#[test]
fn beit_tiny_matches_upstream() {
    check_case("beit_tiny");
}

#[test]
fn the_streaming_forward_gives_the_same_bits_on_every_flavour() {
    // `Comer::forward_streaming` (one interaction's weights at a time, verify's backbone check)
    // against `Comer::forward` with every weight held: every output bit for bit.
    for case in ["det_tiny", "det_tiny_cfi_window", "seg_tiny", "beit_tiny"] {
        let dir = fixture(&format!("forward/{case}"));
        let cfg = ComerConfig::from_case_json(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let inputs = candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
        let img = inputs.values().next().unwrap();
        let store = Store::from_safetensors(&dir.join("weights.safetensors")).unwrap();
        let held = Comer::new(&store.root(), &cfg).unwrap().forward(img, "image").unwrap();
        let store = Store::from_safetensors(&dir.join("weights.safetensors")).unwrap();
        let streamed = Comer::forward_streaming(&store.root(), &cfg, img, "image").unwrap();
        store.finish().unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (a, b) in held.f.iter().zip(&streamed.f) {
            assert_eq!(bits(a), bits(b), "{case}");
        }
        assert_eq!(held.x.as_ref().map(bits), streamed.x.as_ref().map(bits), "{case}");
    }
}
