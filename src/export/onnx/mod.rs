//! `export/onnx/`: the whole ViT-CoMer backbone as one standard-op ONNX graph (opset 19, or
//! 17 without `DeformConv`)
//! that ONNX Runtime runs — upstream's `vit_comer.py` / `beit_comer.py` forwards. Every
//! input-size-dependent quantity (position-embedding resize, deformable-attention reference
//! points, spatial shapes, level start indices, window padding) is computed here at export
//! time for a fixed size, or in the graph from the input's shape for `--dynamic` (symbolic
//! batch, height and width; `dims`). The relative position bias is always gathered in the
//! graph from its table. Weights become initializers; past [`EXTERNAL_DEFAULT`] they
//! are streamed into a side `<model>.onnx.data` file (ONNX external data) as the graph is
//! built. float32, or float16 with the numerically sensitive parts in float32 ([`Precision`]).
//!
//! Layout: `proto` (the ONNX messages), `builder` (graph + weights), `dims` (sizes fixed or
//! computed in the graph), `layers` (Linear, LayerNorm, Conv, ConvFFN, MRFP), `deform`
//! (MSDeformAttn: DeformConv, GridSample or Gather),
//! `backbone` (the three flavours; its pos-embed resize is `model::resize`).

pub(crate) mod backbone;
pub(crate) mod builder;
pub(crate) mod deform;
pub(crate) mod dims;
pub(crate) mod layers;
pub mod proto;

use crate::text::esc;
use std::path::{Path, PathBuf};

use prost::Message;

pub use deform::Deform;

use crate::export::atomic::{self, WriteError};
use crate::formats::TensorView;
use crate::model::ComerConfig;
use builder::{ExternalSink, Graph, Weights};
use proto::{
    Dimension, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, data_type,
};

/// ONNX opset of the `GridSample` and `Gather` graphs (17: `LayerNormalization`,
/// `GridSample`); the default `DeformConv` graphs are opset 19 ([`Deform::opset`]).
pub const OPSET: i64 = 17;
/// IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

/// The IR version an opset needs (ONNX's table: opset 17 → 8, 19 → 9).
pub fn ir_version(opset: i64) -> i64 {
    if opset >= 19 { 9 } else { IR_VERSION }
}
/// Protobuf's hard message limit; past it weights go to external data.
pub const PROTO_LIMIT: usize = 2_000_000_000;
/// The default [`ExportOptions::external_threshold`]: weights of more than 512 MiB go to
/// external data, streamed there while the graph is built, so an export holds about one
/// weight at a time (BEiT-comer-L: 4.1 GB peak RSS inline, see docs/performance.md). Below
/// it the model is one file, built in memory (at most about twice this).
pub const EXTERNAL_DEFAULT: usize = 512 << 20;
/// Initializers smaller than this stay inline even with external data.
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Why an ONNX export failed; node errors name the node and its op type.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// `--input-size` is not a positive multiple of 32 (the stride-32 level must tile it).
    #[error("input size {h}x{w}: {reason}", reason = esc(.reason))]
    InputSize {
        /// Requested height.
        h: usize,
        /// Requested width.
        w: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// `--batch` is zero or over [`MAX_BATCH`].
    #[error("batch size {0} is out of range (allowed: 1..={MAX_BATCH})")]
    Batch(usize),
    /// The config is refused (`ComerConfig::validate`).
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    /// A weight the graph needs is not in the artifact.
    #[error("weight '{key}' is missing from the artifact", key = esc(.key))]
    MissingWeight {
        /// The target key.
        key: String,
    },
    /// A weight has a shape other than the config implies.
    #[error("weight '{key}' has shape {got:?}, expected {expected:?}", key = esc(.key))]
    WeightShape {
        /// The target key.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the artifact.
        got: Vec<usize>,
    },
    /// A node cannot be built for this config/input size.
    #[error("node '{node}' ({op_type}): {reason}", node = esc(.node), reason = esc(.reason))]
    Node {
        /// The node's name (its upstream module path).
        node: String,
        /// The ONNX op type.
        op_type: String,
        /// Why it cannot be built.
        reason: String,
    },
    /// The side `.onnx.data` file could not be written.
    #[error("{path}: {source}", path = esc(.path))]
    ExternalData {
        /// The `.onnx.data` file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The model file could not be written (exists without --force, I/O).
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The float type the graph computes in (`export onnx --dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// float32 everywhere.
    F32,
    /// float16 weights and activations, with LayerNorm, softmax, BatchNorm and the
    /// deformable sampling (locations, attention softmax, bilinear taps) in float32; the
    /// input and outputs stay float32.
    F16,
}

impl Precision {
    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Fixed input height in pixels (a multiple of 32); unused when `dynamic`.
    pub height: usize,
    /// Fixed input width in pixels (a multiple of 32); unused when `dynamic`.
    pub width: usize,
    /// Fixed batch size (at least 1); unused when `dynamic`.
    pub batch: usize,
    /// Symbolic batch, height and width: the graph computes every size-dependent quantity
    /// from its input's shape (height and width multiples of 32).
    pub dynamic: bool,
    /// How deformable attention samples its values.
    pub deform: Deform,
    /// `metadata_props` `source`: where the weights came from.
    pub source: String,
    /// Move initializers to external data when their total passes this many bytes.
    pub external_threshold: usize,
    /// The float type the graph computes in.
    pub dtype: Precision,
}

impl ExportOptions {
    /// Export at `height`×`width`, batch 1, `DeformConv` sampling, external data past
    /// [`EXTERNAL_DEFAULT`].
    pub fn new(height: usize, width: usize) -> ExportOptions {
        ExportOptions {
            height,
            width,
            batch: 1,
            dynamic: false,
            // The fastest formulation in ONNX Runtime: ViT-CoMer-S seg at 512, ORT 1.32 CPU,
            // 2 threads, alternated runs: DeformConv 1.43x GridSample, GridSample 1.11x Gather
            // (docs/performance.md).
            deform: Deform::DeformConv,
            source: String::new(),
            external_threshold: EXTERNAL_DEFAULT,
            dtype: Precision::F32,
        }
    }

    /// Export for any batch and any height × width (multiples of 32), `GridSample`
    /// sampling, external data past [`EXTERNAL_DEFAULT`].
    pub fn dynamic() -> ExportOptions {
        ExportOptions { dynamic: true, ..ExportOptions::new(32, 32) }
    }

    /// The input size as the metadata and the CLI name it: `HxW`, or `dynamic`.
    pub fn size_name(&self) -> String {
        if self.dynamic { "dynamic".to_string() } else { format!("{}x{}", self.height, self.width) }
    }
}

/// The scope of a `--dynamic` graph's first node, which fails (ONNX Runtime names it in its
/// error) on an input whose height or width is not a multiple of 32.
pub const DYNAMIC_SIZE_GUARD: &str = "image_height_and_width_must_be_multiples_of_32";

/// The largest input side an export takes, in pixels: the graph's constants (the resized
/// position table, reference points, window paddings) grow with the input's area.
pub const MAX_INPUT_SIDE: usize = 4096;
/// The largest fixed batch an export takes.
pub const MAX_BATCH: usize = 256;

/// Check an input size: positive multiples of 32, at most [`MAX_INPUT_SIDE`].
pub fn check_input_size(h: usize, w: usize) -> Result<(), OnnxError> {
    if h == 0 || w == 0 || !h.is_multiple_of(32) || !w.is_multiple_of(32) {
        return Err(OnnxError::InputSize {
            h,
            w,
            reason: "height and width must be positive multiples of 32 (the stride-32 pyramid level must tile the image)".into(),
        });
    }
    if h > MAX_INPUT_SIDE || w > MAX_INPUT_SIDE {
        return Err(OnnxError::InputSize { h, w, reason: format!("height and width may be at most {MAX_INPUT_SIDE}") });
    }
    Ok(())
}

/// Check a fixed batch size: 1..=[`MAX_BATCH`].
pub fn check_batch(batch: usize) -> Result<(), OnnxError> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(OnnxError::Batch(batch));
    }
    Ok(())
}

/// A float32 graph input/output of the given dimensions.
fn value_info(name: &str, shape: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: data_type::FLOAT, shape: Some(TensorShapeProto { dim: shape }) }),
        }),
        doc_string: String::new(),
    }
}

/// A fixed dimension.
fn dim(v: usize) -> Dimension {
    Dimension { dim_value: v as i64, dim_param: String::new() }
}

/// A symbolic dimension named `name`.
fn sym(name: &str) -> Dimension {
    Dimension { dim_value: 0, dim_param: name.into() }
}

/// (height, width) of a map at `stride` pixels of the input (1: the input itself).
fn side_dims(opts: &ExportOptions, stride: usize) -> [Dimension; 2] {
    if opts.dynamic {
        let name = |side: &str| if stride == 1 { side.to_string() } else { format!("{side}/{stride}") };
        [sym(&name("height")), sym(&name("width"))]
    } else {
        [dim(opts.height / stride), dim(opts.width / stride)]
    }
}

/// Build the model in memory (initializers inline).
pub fn build_model(tensors: Vec<(String, &TensorView)>, cfg: &ComerConfig, opts: &ExportOptions) -> Result<ModelProto, OnnxError> {
    build_with(tensors, cfg, opts, None).map(|(m, _)| m)
}

/// [`build_model`], the large initializers written to `sink` as they are made (returned).
fn build_with(
    tensors: Vec<(String, &TensorView)>,
    cfg: &ComerConfig,
    opts: &ExportOptions,
    sink: Option<ExternalSink>,
) -> Result<(ModelProto, Option<ExternalSink>), OnnxError> {
    if !opts.dynamic {
        check_input_size(opts.height, opts.width)?;
        check_batch(opts.batch)?;
    }
    cfg.validate()?;
    let weights = Weights::new(tensors);
    let mut g = Graph::new(&weights);
    g.sink = sink;
    g.half = opts.dtype == Precision::F16;
    let mut image = g.input("image");
    let lv = if opts.dynamic {
        // (B, 3, H, W) → batch B and the 16-pixel patch grid (H/16, W/16).
        let b = g.shape_at(&image, 0);
        let (h, w) = (g.shape_at(&image, 2), g.shape_at(&image, 3));
        // A guard: the image reshaped to (B, 3, ⌊H/32⌋·32, ⌊W/32⌋·32) fails, naming this
        // node, unless H and W are multiples of 32 (ONNX has no assertion op).
        image = g.scoped(DYNAMIC_SIZE_GUARD, |g| {
            let (h32, w32) = (g.dim_div(&h, 32), g.dim_div(&w, 32));
            let (h32, w32) = (g.dim_mul(&h32, &32.into()), g.dim_mul(&w32, &32.into()));
            g.reshape_to(&image, &[b.clone(), cfg.in_chans.into(), h32, w32])
        });
        let (h, w) = (g.dim_div(&h, 16), g.dim_div(&w, 16));
        layers::Levels::new(&mut g, b, h, w)
    } else {
        layers::Levels::fixed(opts.batch, opts.height / 16, opts.width / 16)
    };
    let at = deform::Sampling::new(&mut g, &lv, opts.deform, cfg.deform_num_heads, cfg.n_points);
    let cx = backbone::Ctx { cfg, lv, deform: opts.deform, at };
    let outputs = backbone::build(&mut g, &image, &cx)?;
    let d = dim(cfg.embed_dim);
    let b = if opts.dynamic { sym("batch") } else { dim(opts.batch) };
    let hw = |stride| side_dims(opts, stride);
    let out_info = outputs
        .iter()
        .map(|n| {
            // Output strides: f1 4, f2 8, f3 (and x) 16, f4 32 pixels.
            let [oh, ow] = match n.as_str() {
                "f1" => hw(4),
                "f2" => hw(8),
                "f4" => hw(32),
                _ => hw(16),
            };
            let shape = match n.as_str() {
                "x" if !cfg.add_vit_feature => {
                    let tokens = if opts.dynamic { sym("height*width/256") } else { dim(opts.height * opts.width / 256) };
                    vec![b.clone(), tokens, d.clone()]
                }
                _ => vec![b.clone(), d.clone(), oh, ow],
            };
            value_info(n, shape)
        })
        .collect();
    let [ih, iw] = hw(1);
    let config_json = cfg.to_case_json().to_string();
    let meta = [
        ("source", opts.source.clone()),
        ("comer_port.config", config_json),
        ("comer_port.version", env!("CARGO_PKG_VERSION").to_string()),
        ("comer_port.flavor", cfg.flavor.name().to_string()),
        ("comer_port.deform", opts.deform.name().to_string()),
        ("comer_port.dtype", opts.dtype.name().to_string()),
        ("comer_port.input_size", opts.size_name()),
    ];
    let sink = g.sink.take();
    let model = ModelProto {
        ir_version: ir_version(opts.deform.opset()),
        producer_name: "comer-port".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("{} backbone exported by comer-port", cfg.flavor.name()),
        graph: Some(GraphProto {
            node: g.nodes,
            name: cfg.flavor.name().replace('-', "_"),
            initializer: g.initializers,
            doc_string: String::new(),
            input: vec![value_info("image", vec![b, dim(cfg.in_chans), ih, iw])],
            output: out_info,
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opts.deform.opset() }],
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: k.into(), value: v })
            .collect(),
    };
    Ok((model, sink))
}

/// The side file of external data: `<model file name>.data` beside the model.
pub fn data_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".data");
    out.with_file_name(name)
}

/// Move large initializers into `data` (returned), pointing at `location`.
fn externalize(model: &mut ModelProto, location: &str) -> Vec<u8> {
    let mut data = Vec::new();
    if let Some(graph) = model.graph.as_mut() {
        for t in graph.initializer.iter_mut() {
            if t.raw_data.len() < EXTERNAL_MIN_BYTES {
                continue;
            }
            // 64-byte alignment keeps memory-mapped readers happy.
            while data.len() % 64 != 0 {
                data.push(0);
            }
            let offset = data.len();
            let raw = std::mem::take(&mut t.raw_data);
            data.extend_from_slice(&raw);
            point_at_external(t, location, offset, raw.len());
        }
    }
    data
}

/// Make `t` (its raw bytes already moved) point at `length` bytes at `offset` of `location`.
fn point_at_external(t: &mut proto::TensorProto, location: &str, offset: usize, length: usize) {
    t.data_location = proto::DATA_LOCATION_EXTERNAL;
    t.external_data = [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())]
        .into_iter()
        .map(|(k, v)| StringStringEntryProto { key: k.into(), value: v })
        .collect();
}

/// Write the side data file; I/O failures name the data file.
fn write_external(path: &Path, data: &[u8], force: bool) -> Result<(), OnnxError> {
    atomic::write_all(path, data, force).map_err(external_error)
}

/// A write error of the external data file: I/O failures name it as such.
fn external_error(e: WriteError) -> OnnxError {
    match e {
        WriteError::Io { path, source } => OnnxError::ExternalData { path, source },
        other => OnnxError::Write(other),
    }
}

/// What [`export`] wrote.
#[derive(Debug)]
pub struct Written {
    /// Size of the `.onnx` file.
    pub model_bytes: usize,
    /// The external data file and its size, when the weights moved there.
    pub external: Option<(PathBuf, usize)>,
    /// Nodes in the graph.
    pub nodes: usize,
    /// Initializers (weights and constants) in the graph.
    pub initializers: usize,
}

/// Build and write atomically; refuses existing outputs unless `force`.
pub fn export(
    tensors: Vec<(String, &TensorView)>,
    cfg: &ComerConfig,
    opts: &ExportOptions,
    out: &Path,
    force: bool,
) -> Result<Written, OnnxError> {
    if out.exists() && !force {
        return Err(WriteError::Exists(out.to_path_buf()).into());
    }
    let dpath = data_path(out);
    let location = dpath.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The weights alone pass the threshold: stream every large initializer into the data
    // file while the graph is built, so the export holds one weight at a time, not all.
    let weight_bytes: usize = tensors.iter().filter(|(_, t)| t.dtype.is_float()).map(|(_, t)| t.numel() * opts.dtype.bytes()).sum();
    let (model, external) = if weight_bytes > opts.external_threshold {
        let file = atomic::AtomicFile::create(&dpath, force).map_err(external_error)?;
        let (model, sink) = build_with(tensors, cfg, opts, Some(ExternalSink::new(file, location)))?;
        let external = match sink {
            Some(sink) => {
                let (file, len) = sink.finish().map_err(|e| OnnxError::ExternalData { path: dpath.clone(), source: e })?;
                file.commit().map_err(external_error)?;
                Some((dpath, len))
            }
            None => None,
        };
        (model, external)
    } else {
        let mut model = build_model(tensors, cfg, opts)?;
        let total: usize = model.graph.as_ref().map_or(0, |g| g.initializer.iter().map(|t| t.raw_data.len()).sum());
        // Constants grown past the threshold (a very large input size): moved out after the build.
        let mut external = None;
        if total > opts.external_threshold {
            if dpath.exists() && !force {
                return Err(WriteError::Exists(dpath).into());
            }
            let data = externalize(&mut model, &location);
            write_external(&dpath, &data, force)?;
            external = Some((dpath, data.len()));
        }
        (model, external)
    };
    let (nodes, initializers) = model.graph.as_ref().map(|g| (g.node.len(), g.initializer.len())).unwrap_or_default();
    let bytes = model.encode_to_vec();
    drop(model);
    atomic::write_all(out, &bytes, force)?;
    Ok(Written { model_bytes: bytes.len(), external, nodes, initializers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_cfg() -> ComerConfig {
        ComerConfig::from_case_json(
            r#"{"flavor":"vit-comer-det","constructor_kwargs":{"embed_dim":48,"depth":1,"num_heads":3,
            "conv_inplane":16,"interaction_indexes":[[0,0]],"img_size":64,"pretrain_size":64}}"#,
        )
        .expect("valid config")
    }

    #[test]
    fn input_size_variant() {
        let e = build_model(vec![], &tiny_cfg(), &ExportOptions::new(64, 50)).err();
        assert!(matches!(e, Some(OnnxError::InputSize { h: 64, w: 50, .. })));
    }

    #[test]
    fn batch_variant() {
        let mut o = ExportOptions::new(64, 64);
        o.batch = 0;
        assert!(matches!(build_model(vec![], &tiny_cfg(), &o).err(), Some(OnnxError::Batch(0))));
        o.batch = MAX_BATCH + 1;
        assert!(matches!(build_model(vec![], &tiny_cfg(), &o).err(), Some(OnnxError::Batch(_))));
        let e = build_model(vec![], &tiny_cfg(), &ExportOptions::new(64, MAX_INPUT_SIDE + 32)).err();
        assert!(matches!(e, Some(OnnxError::InputSize { .. })));
    }

    #[test]
    fn config_variant() {
        // A config mutated in code after it was parsed is checked again before any node.
        let mut cfg = tiny_cfg();
        cfg.n_points = 0;
        let e = build_model(vec![], &cfg, &ExportOptions::new(64, 64)).err();
        assert!(matches!(e, Some(OnnxError::Config(crate::model::ConfigError::OutOfRange { .. }))), "{e:?}");
    }

    #[test]
    fn missing_weight_variant() {
        let e = build_model(vec![], &tiny_cfg(), &ExportOptions::new(64, 64)).err();
        assert!(matches!(e, Some(OnnxError::MissingWeight { .. })));
    }

    fn view(shape: &[usize]) -> TensorView {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = vec![0u8; n * 4];
        let storage = std::sync::Arc::new(crate::formats::Storage::Owned(bytes));
        TensorView {
            dtype: crate::formats::DType::F32,
            shape: shape.to_vec(),
            strides: crate::formats::tensor::contiguous_strides(shape),
            offset: 0,
            big_endian: false,
            storage,
        }
    }

    #[test]
    fn weight_shape_variant() {
        let t = view(&[3]);
        let w = Weights::new(vec![("level_embed".into(), &t)]);
        assert!(matches!(w.get("level_embed", Some(&[3, 48])), Err(OnnxError::WeightShape { .. })));
    }

    #[test]
    fn node_variant_names_node_and_op() {
        let w = Weights::new(vec![]);
        let mut g = Graph::new(&w);
        let e = g.scoped("blocks.1.attn", |g| g.node_error("Add", "bad".into()));
        match e {
            OnnxError::Node { node, op_type, .. } => {
                assert_eq!(node, "blocks.1.attn");
                assert_eq!(op_type, "Add");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn external_data_variant() {
        let dir = std::env::temp_dir().join(format!("comer-onnx-ext-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(&dir, b"a file, not a folder").ok();
        let target = dir.join("m.onnx");
        let e = write_external(&data_path(&target), b"x", true);
        assert!(matches!(e, Err(OnnxError::ExternalData { .. })));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn write_variant() {
        let dir = std::env::temp_dir();
        let out = dir.join(format!("comer-onnx-exists-{}.onnx", std::process::id()));
        std::fs::write(&out, b"old").ok();
        let e = export(vec![], &tiny_cfg(), &ExportOptions::new(64, 64), &out, false).err();
        assert!(matches!(e, Some(OnnxError::Write(WriteError::Exists(_)))));
        let _ = std::fs::remove_file(&out);
    }
}
