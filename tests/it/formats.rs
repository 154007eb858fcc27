//! Every fixture reads and gets its family right; the DeiT containers agree with each
//! other; the TorchScript CLIP archive agrees with the plain CLIP file; values are checked
//! against ground truth written by `fixtures/gen/make_fixtures.py` (Python stdlib only,
//! values by formula) and against the reference `safetensors` crate.

use crate::util::fixture;
use comer_port::families::detect::{self, Activation, QkvStyle, RelPos};
use comer_port::formats::{self, Checkpoint, DType, Format, TensorView};
use std::collections::BTreeMap;

fn open(rel: &str) -> Checkpoint {
    formats::open(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn sd_map(ck: &Checkpoint) -> BTreeMap<String, TensorView> {
    ck.state_dict().1.into_iter().map(|(k, t)| (k, t.clone())).collect()
}

/// (file, format, family, tensors in the file)
const SOURCES: &[(&str, Format, &str, usize)] = &[
    ("sources/deit/deit_tiny.pth", Format::TorchZip, "deit", 56),
    ("sources/deit/deit_tiny_legacy.pth", Format::TorchLegacy, "deit", 56),
    ("sources/deit/deit_tiny_fp16.pth", Format::TorchZip, "deit", 56),
    ("sources/deit/deit_tiny_ddp_wrapped.pth", Format::TorchZip, "deit", 56),
    ("sources/deit/deit_tiny_distilled.pth", Format::TorchZip, "deit", 59),
    ("sources/beitv2/beitv2_tiny_ft.pth", Format::TorchZip, "beit", 75),
    ("sources/beitv2/beitv2_tiny_pt_shared_relpos.pth", Format::TorchZip, "beit", 66),
    ("sources/augreg/augreg_tiny.npz", Format::Npz, "augreg-npz", 72),
    ("sources/dinov2/dinov2_tiny_vits14.pth", Format::TorchZip, "dinov2", 63),
    ("sources/dinov2/dinov2_tiny_vits14_reg4.pth", Format::TorchZip, "dinov2", 64),
    ("sources/clip/clip_tiny_quickgelu.pt", Format::TorchZip, "clip", 63),
    ("sources/clip/clip_tiny_gelu.pt", Format::TorchZip, "clip", 63),
    ("sources/clip/clip_tiny_quickgelu_visual_jit.pt", Format::TorchScript, "clip", 56),
    ("sources/mae/mae_tiny_pretrain.pth", Format::TorchZip, "mae", 61),
    ("sources/uniperceiver/uniperceiver_tiny_pretrained.pth", Format::TorchZip, "uniperceiver", 64),
    ("sources/hf_vit/vit-tiny-in21k", Format::HfFolder, "hf-vit", 72),
    // torch.save(model) of timm's VisionTransformer: read as its state dict (issue 15).
    ("sources/deit/deit_tiny_full_model.pth", Format::TorchZip, "timm-vit", 56),
];

/// A safetensors file whose header length starts with byte 0x80 (a pickle's PROTO opcode)
/// is read as safetensors, not refused as a pickle (issue 15: a 0x280-byte header).
#[test]
fn a_safetensors_header_length_like_a_pickle_proto_is_safetensors() {
    let mut header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_string();
    while header.len() < 0x280 {
        header.push(' ');
    }
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(&b[..2], &[0x80, 0x02], "looks like PROTO 2");
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&1.5f32.to_le_bytes());
    let p = crate::util::temp_file("proto_like.safetensors", &b);
    for ck in [formats::open(&p).expect("mapped"), formats::open_bytes(&p, b.clone()).expect("in memory")] {
        assert_eq!(ck.format, Format::Safetensors);
        assert_eq!(ck.tensors()[0].1.to_f32(), vec![1.5]);
    }
}

#[test]
fn every_source_reads_with_its_family_and_config() {
    for &(rel, format, family, n) in SOURCES {
        let ck = open(rel);
        assert_eq!(ck.format, format, "{rel}");
        assert_eq!(ck.tensors().len(), n, "{rel}");
        let d = detect::detect_checkpoint(&ck);
        assert_eq!(d.family, family, "{rel}: {}", d.reason);
        let c = d.config.unwrap_or_else(|| panic!("{rel}: no config"));
        assert_eq!(c.embed_dim, 48, "{rel}");
        assert_eq!(c.depth, 4, "{rel}");
        assert_eq!(c.num_heads, 3, "{rel}");
        assert_eq!(c.mlp_hidden, 192, "{rel}");
        assert_eq!(c.pretrain_grid, Some((4, 4)), "{rel}");
        assert_eq!(c.patch_size, if family == "dinov2" { 14 } else { 16 }, "{rel}");
        // Every tensor materialises.
        for (name, t) in ck.tensors() {
            assert_eq!(t.to_f32().len(), t.numel(), "{rel}: {name}");
        }
    }
}

#[test]
fn family_specific_config() {
    let d = detect::detect_checkpoint(&open("sources/beitv2/beitv2_tiny_ft.pth"));
    let c = d.config.expect("config");
    assert_eq!(c.rel_pos, RelPos::PerBlock { window: 4 });
    assert_eq!(c.qkv, QkvStyle::FusedQvBias);
    assert_eq!(c.layer_scale.as_deref(), Some("gamma_1"));
    assert!(c.assumed.is_empty(), "heads come from the table: {:?}", c.assumed);
    let c = detect::detect_checkpoint(&open("sources/beitv2/beitv2_tiny_pt_shared_relpos.pth")).config.expect("config");
    assert_eq!(c.rel_pos, RelPos::Shared { window: 4 });

    let c = detect::detect_checkpoint(&open("sources/dinov2/dinov2_tiny_vits14_reg4.pth")).config.expect("config");
    assert_eq!(c.num_registers, 4);
    assert_eq!(c.prefix_tokens, 5);
    assert_eq!(c.layer_scale.as_deref(), Some("ls1.gamma"));
    assert_eq!(c.layernorm_eps, 1e-6);

    let c = detect::detect_checkpoint(&open("sources/deit/deit_tiny_distilled.pth")).config.expect("config");
    assert_eq!(c.prefix_tokens, 2);
    assert!(c.assumed.contains(&"num_heads".to_string()));

    let c = detect::detect_checkpoint(&open("sources/hf_vit/vit-tiny-in21k")).config.expect("config");
    assert_eq!(c.layernorm_eps, 1e-12);
    assert_eq!(c.qkv, QkvStyle::Separate);
    assert!(c.assumed.is_empty());

    let c = detect::detect_checkpoint(&open("sources/augreg/augreg_tiny.npz")).config.expect("config");
    assert_eq!(c.qkv, QkvStyle::PerHead);
    assert!(c.assumed.is_empty());

    let c = detect::detect_checkpoint(&open("sources/uniperceiver/uniperceiver_tiny_pretrained.pth")).config.expect("config");
    assert_eq!(c.layernorm_eps, 1e-5);
    assert_eq!(c.pre_norm.as_deref(), Some("embeddings_norm"));
    assert_eq!(c.qkv, QkvStyle::InProj);
}

#[test]
fn clip_activation_is_named_by_torchscript_and_assumed_otherwise() {
    let ts = detect::detect_checkpoint(&open("sources/clip/clip_tiny_quickgelu_visual_jit.pt"));
    let c = ts.config.expect("config");
    assert_eq!(c.activation, Activation::QuickGelu);
    assert!(!c.assumed.contains(&"activation".to_string()));
    assert_eq!(c.layernorm_eps, 1e-5);
    assert_eq!(c.pre_norm.as_deref(), Some("ln_pre"));
    // The plain files hold identical keys and shapes: nothing tells GELU from QuickGELU.
    for f in ["sources/clip/clip_tiny_quickgelu.pt", "sources/clip/clip_tiny_gelu.pt"] {
        let d = detect::detect_checkpoint(&open(f));
        let c = d.config.expect("config");
        assert!(c.assumed.contains(&"activation".to_string()), "{f}");
        assert!(d.reason.contains("activation unknown"), "{}", d.reason);
    }
}

#[test]
fn timm_vit_is_a_bare_timm_state_dict() {
    // The DeiT weights without their wrapper are what timm ships.
    let ck = open("sources/deit/deit_tiny.pth");
    let (_, sd) = ck.state_dict();
    let d = detect::detect(&sd, &BTreeMap::new());
    assert_eq!(d.family, "timm-vit", "{}", d.reason);
}

#[test]
fn unknown_family_says_why() {
    let ck = open("generated/arrays.npz");
    let d = detect::detect_checkpoint(&ck);
    assert_eq!(d.family, "unknown");
    assert!(d.config.is_none());
    assert!(d.reason.contains("no family"), "{}", d.reason);
}

#[test]
fn deit_zip_legacy_fp16_and_wrapped_agree() {
    let zip = sd_map(&open("sources/deit/deit_tiny.pth"));
    let legacy = sd_map(&open("sources/deit/deit_tiny_legacy.pth"));
    let wrapped = sd_map(&open("sources/deit/deit_tiny_ddp_wrapped.pth"));
    let fp16 = sd_map(&open("sources/deit/deit_tiny_fp16.pth"));
    assert_eq!(zip.len(), 56);
    for (name, t) in &zip {
        let a = t.to_f32();
        for (other, what) in [(&legacy, "legacy"), (&wrapped, "wrapped")] {
            let o = other.get(name).unwrap_or_else(|| panic!("{what} lacks {name}"));
            assert_eq!(o.shape, t.shape, "{what} {name}");
            assert_eq!(o.to_f32(), a, "{what} {name}");
        }
        let h = fp16.get(name).unwrap_or_else(|| panic!("fp16 lacks {name}"));
        assert_eq!(h.dtype, DType::F16);
        for (x, y) in a.iter().zip(h.to_f32()) {
            // f16 rounding: relative 2^-11, plus subnormal floor.
            assert!((x - y).abs() <= x.abs() * 4.9e-4 + 6e-8, "fp16 {name}: {x} vs {y}");
        }
    }
}

#[test]
fn torchscript_clip_matches_the_plain_visual_tower() {
    let ts = open("sources/clip/clip_tiny_quickgelu_visual_jit.pt");
    let plain = sd_map(&open("sources/clip/clip_tiny_quickgelu.pt"));
    let tensors = ts.tensors();
    assert_eq!(tensors.len(), 56);
    let mut matched = 0;
    for (name, t) in tensors {
        let p = plain
            .get(&format!("visual.{name}"))
            .unwrap_or_else(|| panic!("plain CLIP lacks visual.{name}"));
        assert_eq!(p.shape, t.shape, "{name}");
        assert_eq!(p.to_f32(), t.to_f32(), "{name}");
        matched += 1;
    }
    let visual = plain.keys().filter(|k| k.starts_with("visual.")).count();
    assert_eq!(matched, visual, "every visual tensor is in the archive");
}

/// The formula `fixtures/gen/make_fixtures.py` writes.
fn expected(dtype: DType, k: usize) -> f64 {
    let k = k as f64;
    match dtype {
        DType::F64 | DType::F32 | DType::F16 | DType::BF16 => k * 0.5 - 1.0,
        DType::U8 => k,
        DType::Bool => k % 2.0,
        _ => k - 3.0,
    }
}

fn check_formula(name: &str, t: &TensorView, index: impl Fn(usize) -> usize) {
    let v = t.to_f64();
    assert_eq!(v.len(), t.numel(), "{name}");
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, expected(t.dtype, index(i)), "{name}[{i}]");
    }
}

#[test]
fn every_dtype_both_byteorders_and_strided_views() {
    for (f, be) in [("generated/dtypes_le.pth", false), ("generated/dtypes_be.pth", true)] {
        let ck = open(f);
        assert_eq!(ck.metadata.get("byteorder").map(String::as_str), Some(if be { "big" } else { "little" }));
        let sd = sd_map(&ck);
        let dtypes = [
            ("f64", DType::F64),
            ("f32", DType::F32),
            ("f16", DType::F16),
            ("bf16", DType::BF16),
            ("i64", DType::I64),
            ("i32", DType::I32),
            ("i16", DType::I16),
            ("i8", DType::I8),
            ("u8", DType::U8),
            ("bool", DType::Bool),
        ];
        for (n, d) in dtypes {
            let t = &sd[&format!("t_{n}")];
            assert_eq!(t.dtype, d);
            assert_eq!(t.shape, vec![3, 4]);
            check_formula(n, t, |i| i);
        }
        // The transposed view shares t_f32's storage: element (i, j) is storage[j*4 + i].
        let tt = &sd["t_f32_T"];
        assert_eq!((tt.shape.clone(), tt.strides().to_vec()), (vec![4, 3], vec![1, 4]));
        assert!(!tt.is_contiguous());
        assert!(std::sync::Arc::ptr_eq(tt.storage(), sd["t_f32"].storage()));
        check_formula("t_f32_T", tt, |i| (i % 3) * 4 + i / 3);
        let f32s = tt.to_f32();
        assert_eq!(f32s[1], expected(DType::F32, 4) as f32);
        // Offset view: the last row.
        check_formula("t_f32_row2", &sd["t_f32_row2"], |i| 8 + i);
        // _rebuild_parameter unwraps to the tensor.
        check_formula("p_f32", &sd["p_f32"], |i| i);
        // to_le_bytes of a big-endian tensor is little-endian.
        let le = sd["t_i32"].to_le_bytes();
        assert_eq!(&le[..4], &(-3i32).to_le_bytes());
    }
}

#[test]
fn untyped_storage_v3() {
    let sd = sd_map(&open("generated/untyped_v3.pth"));
    assert_eq!(sd["w"].dtype, DType::F32);
    check_formula("w", &sd["w"], |i| i);
    assert_eq!(sd["idx"].dtype, DType::I64);
    check_formula("idx", &sd["idx"], |i| i);
}

#[test]
fn legacy_views_into_root_storages() {
    let ck = open("generated/legacy_views.pth");
    assert_eq!(ck.format, Format::TorchLegacy);
    let sd = sd_map(&ck);
    check_formula("whole", &sd["whole"], |i| i);
    check_formula("in_view", &sd["in_view"], |i| 8 + i);
}

#[test]
fn npz_stored_deflated_endianness_and_fortran_order() {
    let ck = open("generated/arrays.npz");
    assert_eq!(ck.format, Format::Npz);
    let sd = sd_map(&ck);
    assert_eq!(sd.len(), 9);
    for n in ["a_f32_le", "a_f32_be", "a_f16", "a_f64", "a_i64", "a_u8", "a_bool", "a_fortran", "dir/nested"] {
        check_formula(n, &sd[n], |i| i);
    }
    assert!(sd["a_f32_be"].big_endian());
    assert!(!sd["a_fortran"].is_contiguous());
    let npy = open("generated/single_be.npy");
    assert_eq!(npy.format, Format::Npy);
    let (_, t) = &npy.tensors()[0];
    assert_eq!(t.shape, vec![3, 2]);
    check_formula("single_be", t, |i| i);
}

#[test]
fn safetensors_agrees_with_the_reference_crate() {
    let p = fixture("sources/hf_vit/vit-tiny-in21k/model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference reads it");
    let ck = formats::open(&p).expect("open");
    assert_eq!(ck.format, Format::Safetensors);
    let ours = sd_map(&ck);
    assert_eq!(ours.len(), st.len());
    for (name, view) in st.tensors() {
        let t = &ours[&name];
        assert_eq!(t.shape, view.shape(), "{name}");
        assert_eq!(t.to_le_bytes(), view.data(), "{name}");
    }
}

#[test]
fn hf_folder_reads_config_and_sharded_index() {
    let ck = open("sources/hf_vit/vit-tiny-in21k");
    assert_eq!(ck.metadata.get("config.layer_norm_eps").map(String::as_str), Some("1e-12"));
    assert_eq!(ck.metadata.get("config.num_attention_heads").map(String::as_str), Some("3"));
    // A sharded copy: two safetensors shards and an index.
    let src = sd_map(&ck);
    let dir = crate::util::tmpdir();
    let names: Vec<&String> = src.keys().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, keys) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        drop(views);
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = keys
            .iter()
            .map(|k| ((*k).clone(), src[*k].to_le_bytes(), src[*k].shape.clone()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(k, b, s)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view")))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(shard)).expect("write shard");
        for k in keys.iter() {
            weight_map.insert((*k).clone(), serde_json::Value::String(shard.into()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    std::fs::copy(fixture("sources/hf_vit/vit-tiny-in21k/config.json"), dir.join("config.json")).expect("config");
    let sharded = formats::open(&dir).expect("sharded folder");
    let got = sd_map(&sharded);
    assert_eq!(got.len(), src.len());
    for (k, t) in &src {
        assert_eq!(got[k].to_f32(), t.to_f32(), "{k}");
    }
    assert_eq!(detect::detect_checkpoint(&sharded).family, "hf-vit");
}

#[test]
fn hf_folder_with_pytorch_model_bin() {
    let dir = crate::util::tmpdir();
    std::fs::copy(fixture("sources/deit/deit_tiny.pth"), dir.join("pytorch_model.bin")).expect("copy");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "vit", "layer_norm_eps": 1e-6}"#).expect("config");
    let ck = formats::open(&dir).expect("folder with a .bin");
    assert_eq!(ck.format, Format::HfFolder);
    assert_eq!(ck.tensors().len(), 56);
    assert_eq!(ck.metadata.get("config.model_type").map(String::as_str), Some("vit"));
}

#[test]
fn raw_pickle_without_container() {
    use comer_port::formats::testkit::Pickle;
    let p = crate::util::temp_file("meta.bin", &Pickle::new().empty_dict().str("epoch").int(3).setitem().stop().0);
    let ck = formats::open(&p).expect("plain-data pickle");
    assert_eq!(ck.format, Format::RawPickle);
    assert!(ck.tensors().is_empty());
    assert!(matches!(ck.root.get("epoch"), Some(comer_port::formats::Value::Int(3))));
}

#[test]
fn torchscript_archive_metadata() {
    let ck = open("sources/clip/clip_tiny_quickgelu_visual_jit.pt");
    assert_eq!(ck.metadata.get("torchscript.constants").map(String::as_str), Some("2"));
    assert_eq!(ck.metadata.get("activation").map(String::as_str), Some("quick-gelu"));
    // Module objects are inert data under their class names.
    match &ck.root {
        comer_port::formats::Value::Object { class, .. } => assert!(class.starts_with("__torch__.open_clip"), "{class}"),
        other => panic!("root is a {}", other.kind()),
    }
}

#[test]
fn namespace_numpy_scalar_and_codecs_are_inert_metadata() {
    use comer_port::formats::testkit::{torch_zip, Pickle};
    use comer_port::formats::Value;
    // {"args": argparse.Namespace(lr=0.1), "acc": numpy scalar(dtype('f8'), b'..'), "w": tensor}
    let p = Pickle::new()
        .empty_dict()
        .mark()
        .str("args")
        .global("argparse", "Namespace")
        .empty_tuple()
        .op(0x81)
        .empty_dict()
        .str("lr")
        .op(b'G')
        .raw(&0.1f64.to_be_bytes())
        .setitem()
        .op(b'b')
        .str("acc")
        .global("numpy.core.multiarray", "scalar")
        .global("numpy", "dtype")
        .mark()
        .str("f8")
        .newfalse()
        .op(0x88)
        .tuple()
        .reduce()
        .mark()
        .int(3)
        .str("<")
        .none()
        .none()
        .none()
        .int(-1)
        .int(-1)
        .int(0)
        .tuple()
        .op(b'b')
        .global("_codecs", "encode")
        .mark()
        .str("\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{e0}?")
        .str("latin1")
        .tuple()
        .reduce()
        .op(0x86)
        .reduce()
        .str("w")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .setitems()
        .stop();
    let data: Vec<u8> = [1.5f32, 2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f = crate::util::temp_file("meta.pth", &torch_zip("meta", &p.0, "little", &[("0", &data)]));
    let ck = formats::open(&f).expect("metadata objects are data");
    match ck.root.get("args") {
        Some(Value::Object { class, state, .. }) => {
            assert_eq!(class, "argparse.Namespace");
            assert!(matches!(state.get("lr"), Some(Value::Float(x)) if (*x - 0.1).abs() < 1e-12));
        }
        other => panic!("args: {other:?}"),
    }
    match ck.root.get("acc") {
        Some(Value::Object { class, args, .. }) => {
            assert_eq!(class, "numpy.core.multiarray.scalar");
            let Value::Tuple(a) = args.as_ref() else { panic!("scalar args") };
            assert!(matches!(&a[1], Value::Bytes(b) if b == &0.5f64.to_le_bytes()[..]));
        }
        other => panic!("acc: {other:?}"),
    }
    assert_eq!(ck.tensors().len(), 1);
}
