//! One test per `ModelError` variant (issue 3): each built from a fixture or hand-made
//! tensors, matching the variant, not the message.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use comer_port::model::{Comer, ComerConfig, ModelError, Store};

use crate::util::fixture;

fn case(name: &str) -> (ComerConfig, HashMap<String, Tensor>) {
    let dir = fixture(&format!("forward/{name}"));
    let cfg = ComerConfig::from_case_json(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let w = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu).unwrap();
    (cfg, w)
}

fn build(cfg: &ComerConfig, w: HashMap<String, Tensor>) -> Result<Comer, ModelError> {
    let store = Store::new(w);
    let m = Comer::new(&store.root(), cfg)?;
    store.finish()?;
    Ok(m)
}

#[test]
fn missing_key_is_listed_with_a_hint() {
    let (cfg, mut w) = case("det_tiny");
    let t = w.remove("level_embed").unwrap();
    w.insert("level_embedd".into(), t);
    match build(&cfg, w) {
        Err(ModelError::MissingKeys { keys }) => {
            assert_eq!(keys[0].key, "level_embed");
            assert_eq!(keys[0].hint.as_deref(), Some("level_embedd"));
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn unexpected_key_is_refused() {
    let (cfg, mut w) = case("det_tiny");
    w.insert("cls_token".into(), Tensor::zeros((1, 1, 48), DType::F32, &Device::Cpu).unwrap());
    assert!(matches!(build(&cfg, w), Err(ModelError::UnexpectedKeys { .. })));
}

#[test]
fn buffers_may_be_absent() {
    let (cfg, mut w) = case("beit_tiny");
    w.retain(|k, _| !k.ends_with("relative_position_index") && !k.ends_with("num_batches_tracked"));
    assert!(build(&cfg, w).is_ok());
}

#[test]
fn wrong_shape_is_refused() {
    let (cfg, mut w) = case("det_tiny");
    w.insert("level_embed".into(), Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap());
    assert!(matches!(build(&cfg, w), Err(ModelError::Shape { .. })));
}

#[test]
fn wrong_dtype_is_refused() {
    let (cfg, mut w) = case("det_tiny");
    w.insert("level_embed".into(), Tensor::zeros((3, 48), DType::U8, &Device::Cpu).unwrap());
    assert!(matches!(build(&cfg, w), Err(ModelError::Dtype { .. })));
}

#[test]
fn half_precision_weights_run_as_f32() {
    let (cfg, mut w) = case("det_tiny");
    let t = w["level_embed"].to_dtype(DType::F16).unwrap();
    w.insert("level_embed".into(), t);
    assert!(build(&cfg, w).is_ok(), "an f16 artifact runs like model.float()");
}

#[test]
fn wrong_relative_position_index_is_refused() {
    let (cfg, mut w) = case("beit_tiny");
    let k = "blocks.0.attn.relative_position_index";
    let t = w[k].zeros_like().unwrap();
    w.insert(k.into(), t);
    assert!(matches!(build(&cfg, w), Err(ModelError::RelativePositionIndex { .. })));
}

#[test]
fn input_not_divisible_by_32_is_refused() {
    let (cfg, w) = case("det_tiny");
    let m = build(&cfg, w).unwrap();
    let x = Tensor::zeros((1, 3, 48, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x, "x"), Err(ModelError::InputSize { .. })));
}

#[test]
fn input_of_wrong_rank_is_refused() {
    let (cfg, w) = case("det_tiny");
    let m = build(&cfg, w).unwrap();
    let x = Tensor::zeros((3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x, "x"), Err(ModelError::InputShape { .. })));
}

#[test]
fn global_block_needs_its_grid() {
    let (cfg, w) = case("beit_tiny");
    let m = build(&cfg, w).unwrap();
    let x = Tensor::zeros((1, 3, 128, 128), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x, "x"), Err(ModelError::GlobalWindow { .. })));
}

#[test]
fn unreadable_weights_are_reported() {
    assert!(matches!(Store::from_safetensors(Path::new("/nonexistent.safetensors")), Err(ModelError::Read { .. })));
}

#[test]
fn tensor_op_errors_convert() {
    let e = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap().reshape((4, 2)).unwrap_err();
    assert!(matches!(ModelError::from(e), ModelError::Candle(_)));
}

#[test]
fn config_that_upstream_cannot_run_is_refused() {
    let (mut cfg, w) = case("det_tiny");
    cfg.img_size = 96;
    assert!(matches!(build(&cfg, w), Err(ModelError::Config(_))));
}
