//! `comer-port export onnx` (issue 6): the written model decodes with prost, carries the
//! expected opset, input, outputs and metadata, is byte-identical across runs, and the CLI
//! refuses bad input sizes and existing outputs without `--force`.

use std::path::{Path, PathBuf};

use comer_port::export::onnx::proto::ModelProto;
use prost::Message;

use crate::util::{bin, fixture};

fn tmp(name: &str) -> PathBuf {
    let dir = crate::util::scratch_root().join("onnx");
    std::fs::create_dir_all(&dir).ok();
    dir.join(name)
}

/// `export onnx` of a fixture case with its config, `sizing` (`--input-size HxW` or
/// `--dynamic`) and `extra` flags.
fn export_with(case: &str, sizing: &[&str], out: &Path, extra: &[&str]) -> std::process::Output {
    let dir = fixture(&format!("forward/{case}"));
    bin()
        .args(["export", "onnx"])
        .arg(dir.join("weights.safetensors"))
        .arg("-o")
        .arg(out)
        .args(sizing)
        .arg("--config")
        .arg(dir.join("case.json"))
        .args(extra)
        .output()
        .expect("run comer-port")
}

fn export(case: &str, size: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    export_with(case, &["--input-size", size], out, extra)
}

fn decode(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).expect("read model");
    ModelProto::decode(bytes.as_slice()).expect("prost decodes the model")
}

#[test]
fn beit_model_has_opset_io_and_metadata() {
    let out = tmp("beit.onnx");
    let o = export("beit_tiny", "64x64", &out, &["--force", "--batch", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = decode(&out);
    assert_eq!(m.opset_import.len(), 1);
    // The default sampling is DeformConv, which came in opset 19 (IR version 9).
    assert_eq!(m.opset_import[0].version, 19);
    assert_eq!(m.ir_version, 9);
    let g = m.graph.expect("graph");
    let outs: Vec<&str> = g.output.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(outs, ["x", "f1", "f2", "f3", "f4"]);
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "image");
    let dims: Vec<i64> = g.input[0]
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    assert_eq!(dims, [2, 3, 64, 64]);
    assert!(g.node.iter().all(|n| n.domain.is_empty()), "standard ops only");
    let meta: std::collections::BTreeMap<_, _> = m.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(meta.get("source"), Some(&"weights.safetensors"));
    assert_eq!(meta.get("comer_port.version"), Some(&env!("CARGO_PKG_VERSION")));
    let cfg: serde_json::Value = serde_json::from_str(meta["comer_port.config"]).expect("config JSON");
    assert_eq!(cfg["flavor"], "beit-comer");
}

/// Issue 16: BEiT's relative-position bias is gathered in the graph from each block's table
/// by one shared index per window size — no initializer holds an expanded (heads, N, N)
/// bias — and the initializers add up to the weights plus those indexes.
#[test]
fn beit_relative_position_bias_is_gathered_not_expanded() {
    let out = tmp("beit-compact.onnx");
    let o = export("beit_tiny", "64x64", &out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = decode(&out).graph.expect("graph");
    let heads = 3;
    for t in &g.initializer {
        let expanded = t.dims.len() == 3 && t.dims[0] == heads && t.dims[1] == t.dims[2] && t.dims[1] > 1;
        assert!(!expanded, "{} is an expanded bias {:?}", t.name, t.dims);
    }
    let tables = g.initializer.iter().filter(|t| t.name.ends_with("relative_position_bias_table")).count();
    assert_eq!(tables, 4, "one table per block, as stored");
    let indexes: Vec<_> = g.initializer.iter().filter(|t| t.name.starts_with("relative_position_index_")).collect();
    assert!(!indexes.is_empty() && indexes.len() <= 2, "one index per window size: {:?}", indexes.iter().map(|t| &t.name).collect::<Vec<_>>());
    let gathers = g.node.iter().filter(|n| n.op_type == "Gather" && n.input.iter().any(|i| i.ends_with("relative_position_bias_table"))).count();
    assert_eq!(gathers, 4, "each block gathers its own table");
}

#[test]
fn det_model_has_four_outputs_and_every_deform_formulation() {
    for (deform, op, opset) in [("grid-sample", "GridSample", 17), ("gather", "Gather", 17), ("deform-conv", "DeformConv", 19)] {
        let out = tmp(&format!("det-{deform}.onnx"));
        let o = export("det_tiny", "96x128", &out, &["--force", "--deform", deform]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m = decode(&out);
        assert_eq!(m.opset_import[0].version, opset, "{deform}");
        let g = m.graph.expect("graph");
        let outs: Vec<&str> = g.output.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(outs, ["f1", "f2", "f3", "f4"]);
        assert!(g.node.iter().any(|n| n.op_type == op));
        if deform != "grid-sample" {
            assert!(!g.node.iter().any(|n| n.op_type == "GridSample"));
        }
        if deform == "deform-conv" {
            // One depthwise DeformConv per level of every deformable attention, the heads as
            // offset groups, and no per-element location arithmetic left in the graph.
            let convs: Vec<_> = g.node.iter().filter(|n| n.op_type == "DeformConv").collect();
            let attns = g.initializer.iter().filter(|t| t.name.ends_with("sampling_offsets.weight_by_level")).count();
            assert!(attns > 0 && convs.len() == 3 * attns, "{} DeformConv for {attns} attentions", convs.len());
            let attr = |n: &comer_port::export::onnx::proto::NodeProto, k: &str| n.attribute.iter().find(|a| a.name == k).map(|a| a.i);
            assert!(convs.iter().all(|n| attr(n, "offset_group").is_some() && attr(n, "group") > attr(n, "offset_group")));
            assert!(!g.initializer.iter().any(|t| t.name.ends_with("sampling_offsets.weight")), "offsets only by level");
        }
    }
}

#[test]
fn export_is_deterministic() {
    let a = tmp("det-a.onnx");
    let b = tmp("det-b.onnx");
    for p in [&a, &b] {
        let o = export("det_tiny_cfi_window", "64x96", p, &["--force"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
}

#[test]
fn refuses_input_size_not_divisible_by_32() {
    let out = tmp("bad-size.onnx");
    let o = export("seg_tiny", "64x80", &out, &[]);
    // A flag value the parser checks: a usage error (issue 15), before any file is opened.
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiples of 32"));
    assert!(!out.exists());
}

#[test]
fn refuses_existing_output_without_force() {
    let out = tmp("exists.onnx");
    std::fs::write(&out, b"keep me").expect("write");
    let o = export("seg_tiny", "64x64", &out, &[]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me");
    let o = export("seg_tiny", "64x64", &out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(decode(&out).graph.is_some());
}

#[test]
fn external_data_past_threshold_keeps_model_readable() {
    use comer_port::export::onnx::{ExportOptions, data_path, export as export_onnx};
    let dir = fixture("forward/det_tiny");
    let ck = comer_port::formats::open(&dir.join("weights.safetensors")).expect("open");
    let cfg = comer_port::model::ComerConfig::from_case_json(&std::fs::read_to_string(dir.join("case.json")).expect("case"))
        .expect("config");
    let mut opts = ExportOptions::new(64, 64);
    opts.external_threshold = 0;
    let out = tmp("ext.onnx");
    let (_, tensors) = ck.state_dict();
    let w = export_onnx(tensors, &cfg, &opts, &out, true).expect("export");
    let (dpath, n) = w.external.expect("external data written");
    assert_eq!(dpath, data_path(&out));
    assert!(n > 0);
    let g = decode(&out).graph.expect("graph");
    assert!(g.initializer.iter().any(|t| t.data_location == 1 && t.raw_data.is_empty()));
}

/// Issue 16: past the threshold the initializers are streamed into the data file while the
/// graph is built; the files are byte-identical to moving them out after an in-memory
/// build (the layout `externalize` writes), and a failed streamed export leaves nothing.
#[test]
fn streamed_external_data_equals_the_in_memory_layout_and_fails_clean() {
    use comer_port::export::onnx::{ExportOptions, data_path, export as export_onnx};
    let dir = fixture("forward/det_tiny");
    let ck = comer_port::formats::open(&dir.join("weights.safetensors")).expect("open");
    let cfg = comer_port::model::ComerConfig::from_case_json(&std::fs::read_to_string(dir.join("case.json")).expect("case"))
        .expect("config");
    let (_, tensors) = ck.state_dict();
    let weight_bytes: usize = tensors.iter().filter(|(_, t)| t.dtype.is_float()).map(|(_, t)| t.numel() * 4).sum();
    let run = |threshold: usize, name: &str| {
        let mut opts = ExportOptions::new(64, 64);
        opts.external_threshold = threshold;
        let out = tmp(name);
        let w = export_onnx(tensors.clone(), &cfg, &opts, &out, true).expect("export");
        std::fs::read(w.external.expect("external data written").0).expect("data")
    };
    // Streamed (the weights pass the threshold) against built in memory and moved out
    // after (only the constants push the total past it).
    let streamed = run(weight_bytes - 1, "streamed.onnx");
    let moved = run(weight_bytes, "moved.onnx");
    assert_eq!(streamed, moved, "same data file");
    let (a, b) = (decode(&tmp("streamed.onnx")), decode(&tmp("moved.onnx")));
    let (a, b) = (a.graph.expect("graph"), b.graph.expect("graph"));
    assert_eq!(a.initializer, b.initializer.iter().map(|t| {
        let mut t = t.clone();
        for e in &mut t.external_data {
            e.value = e.value.replace("moved.onnx.data", "streamed.onnx.data");
        }
        t
    }).collect::<Vec<_>>(), "same initializers, same offsets");
    assert!(a.initializer.iter().any(|t| t.data_location == 1), "weights are external");
    // A weight missing half way: an error, and neither file nor a temporary is left.
    let d = crate::util::tmpdir();
    let out = d.join("m.onnx");
    let missing: Vec<_> = tensors.iter().filter(|(k, _)| !k.starts_with("interactions.0.")).cloned().collect();
    let mut opts = ExportOptions::new(64, 64);
    opts.external_threshold = 0;
    assert!(export_onnx(missing, &cfg, &opts, &out, false).is_err());
    assert_eq!(std::fs::read_dir(&d).expect("dir").count(), 0, "nothing left behind");
    assert!(!data_path(&out).exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// Issue 16: `--dtype f16` stores the weights as float16 (LayerNorm and BatchNorm parameters
/// and the deformable sampling's constants stay float32), keeps the graph's input and outputs
/// float32, records the dtype, and halves the initializer bytes of the large weights.
#[test]
fn f16_export_has_half_weights_and_float_io() {
    let (o32, o16) = (tmp("dtype-f32.onnx"), tmp("dtype-f16.onnx"));
    for (out, dt) in [(&o32, "f32"), (&o16, "f16")] {
        let o = export("det_tiny", "64x64", out, &["--force", "--dtype", dt]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (m32, m16) = (decode(&o32), decode(&o16));
    let meta: std::collections::BTreeMap<_, _> = m16.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(meta.get("comer_port.dtype"), Some(&"f16"));
    let (g32, g16) = (m32.graph.expect("graph"), m16.graph.expect("graph"));
    let io_types = |g: &comer_port::export::onnx::proto::GraphProto| -> Vec<i32> {
        g.input.iter().chain(&g.output).map(|v| v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).map_or(0, |t| t.elem_type)).collect()
    };
    assert!(io_types(&g16).iter().all(|&t| t == 1), "float32 input and outputs");
    let qkv = g16.initializer.iter().find(|t| t.name.contains("blocks.0.attn.qkv")).expect("the first block's qkv weight");
    assert_eq!(qkv.data_type, 10, "{} is float16", qkv.name);
    let kinds = |g: &comer_port::export::onnx::proto::GraphProto, ty: i32| g.initializer.iter().filter(|t| t.data_type == ty).count();
    assert_eq!(kinds(&g32, 10), 0, "a float32 graph has no float16 initializer");
    assert!(kinds(&g16, 10) > 0 && kinds(&g16, 1) > 0, "float16 weights, float32 norm parameters and sampling constants");
    let norm = g16.initializer.iter().find(|t| t.name.ends_with("norm1.weight")).expect("a LayerNorm weight");
    assert_eq!(norm.data_type, 1, "LayerNorm parameters stay float32");
    let bytes = |g: &comer_port::export::onnx::proto::GraphProto| g.initializer.iter().map(|t| t.raw_data.len()).sum::<usize>();
    assert!(bytes(&g16) * 10 < bytes(&g32) * 6, "f16 {} vs f32 {} initializer bytes", bytes(&g16), bytes(&g32));
    let casts = g16.node.iter().filter(|n| n.op_type == "Cast").count();
    assert!(casts > g32.node.iter().filter(|n| n.op_type == "Cast").count(), "float32 regions are entered and left");
}

fn export_dynamic(case: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    export_with(case, &["--dynamic", "--force"], out, extra)
}

/// (dim_value, dim_param) of each dimension of a graph input or output.
fn dims_of(v: &comer_port::export::onnx::proto::ValueInfoProto) -> Vec<(i64, String)> {
    v.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| (d.dim_value, d.dim_param.clone())).collect())
        .unwrap_or_default()
}

#[test]
fn dynamic_export_has_symbolic_batch_height_and_width() {
    let out = tmp("dynamic.onnx");
    let o = export_dynamic("det_tiny_cfi_window", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("any batch and input size"));
    let m = decode(&out);
    let g = m.graph.expect("graph");
    let sym = |s: &str| (0, s.to_string());
    assert_eq!(dims_of(&g.input[0]), [sym("batch"), (3, String::new()), sym("height"), sym("width")]);
    assert_eq!(dims_of(&g.output[0]), [sym("batch"), (48, String::new()), sym("height/4"), sym("width/4")]);
    assert_eq!(dims_of(&g.output[3]), [sym("batch"), (48, String::new()), sym("height/32"), sym("width/32")]);
    // The sizes come from the input's shape: no resized position table or reference-point
    // constant of any one size is left in the graph.
    let ops: std::collections::BTreeSet<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    for op in ["Shape", "Range", "Pad"] {
        assert!(ops.contains(op), "{op} missing from {ops:?}");
    }
    assert!(g.node.iter().any(|n| n.op_type == "Resize" && n.name.starts_with("pos_embed/")), "pos_embed resized in the graph");
    let meta: std::collections::BTreeMap<_, _> = m.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(meta.get("comer_port.input_size"), Some(&"dynamic"));
    // Deterministic like every export.
    let again = tmp("dynamic-again.onnx");
    assert!(export_dynamic("det_tiny_cfi_window", &again, &[]).status.success());
    assert_eq!(std::fs::read(&out).expect("a"), std::fs::read(&again).expect("b"));
}

#[test]
fn dynamic_conflicts_with_a_fixed_size_or_batch() {
    for extra in [["--input-size", "64x64"], ["--batch", "2"]] {
        let out = tmp("dynamic-conflict.onnx");
        let o = export_dynamic("seg_tiny", &out, &extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!out.exists());
    }
}

#[test]
fn dynamic_refuses_a_global_beit_block_naming_the_size_it_fixes() {
    // beit_tiny's blocks 1 and 3 attend globally with a 4x4 relative-position table.
    let out = tmp("dynamic-beit.onnx");
    let o = export_dynamic("beit_tiny", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("global BEiT block 1") && err.contains("--dynamic") && err.contains("--input-size 64x64"), "{err}");
    assert!(!out.exists());
    assert!(!comer_port::export::onnx::data_path(&out).exists());
}
