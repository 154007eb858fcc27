//! The graph under construction: nodes in topological order, initializers, and the weights
//! they come from. Node names are `scope/op_type_N` so an error or an ONNX Runtime message
//! points back at the upstream module (`interactions.0.cti_tov.attn`) it was built for. This
//! is the ONNX counterpart of the reference forward's `VarBuilder` over upstream's
//! `state_dict()` names.

use std::collections::{BTreeSet, HashMap};

use super::OnnxError;
use super::proto::{AttributeProto, NodeProto, TensorProto, attribute_type, data_type};
use crate::formats::TensorView;

/// The artifact's tensors by target key, converted to float32 on demand.
pub struct Weights<'a> {
    map: HashMap<String, &'a TensorView>,
}

impl<'a> Weights<'a> {
    pub fn new(tensors: Vec<(String, &'a TensorView)>) -> Weights<'a> {
        Weights { map: tensors.into_iter().collect() }
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Shape and float32 values of `key`; `expected` (when given) must match the shape.
    pub fn get(&self, key: &str, expected: Option<&[usize]>) -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
        let t = self.map.get(key).ok_or_else(|| OnnxError::MissingWeight { key: key.to_string() })?;
        if let Some(e) = expected
            && t.shape != e
        {
            return Err(OnnxError::WeightShape { key: key.to_string(), expected: e.to_vec(), got: t.shape.clone() });
        }
        let v = t.to_f32();
        // Each weight is read once: its mapped pages leave the resident set again.
        t.release();
        Ok((t.shape.clone(), v))
    }
}

/// Where the large initializers' bytes go while the graph is built, so the export never
/// holds them all (ONNX external data): the temporary file of `<model>.onnx.data`, each
/// initializer of at least [`EXTERNAL_MIN_BYTES`](super::EXTERNAL_MIN_BYTES) bytes appended
/// 64-byte aligned, laid out as [`externalize`](super::externalize) would lay it out.
pub struct ExternalSink {
    file: crate::export::atomic::AtomicFile,
    location: String,
    len: usize,
    /// The first write error; later initializers are not written.
    error: Option<std::io::Error>,
}

impl ExternalSink {
    /// A sink writing `file`, named `location` (the data file's name) in each initializer.
    pub fn new(file: crate::export::atomic::AtomicFile, location: String) -> ExternalSink {
        ExternalSink { file, location, len: 0, error: None }
    }

    fn take(&mut self, t: &mut TensorProto) {
        if t.raw_data.len() < super::EXTERNAL_MIN_BYTES || self.error.is_some() {
            return;
        }
        use std::io::Write;
        let pad = (64 - self.len % 64) % 64;
        let raw = std::mem::take(&mut t.raw_data);
        let wrote = self.file.write_all(&[0u8; 64][..pad]).and_then(|()| self.file.write_all(&raw));
        if let Err(e) = wrote {
            self.error = Some(e);
            return;
        }
        super::point_at_external(t, &self.location, self.len + pad, raw.len());
        self.len += pad + raw.len();
    }

    /// The data file (still temporary) and its length, or the first write error.
    pub fn finish(self) -> Result<(crate::export::atomic::AtomicFile, usize), std::io::Error> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.file, self.len)),
        }
    }
}

pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: attribute_type::INT, ..Default::default() }
}

pub fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f, r#type: attribute_type::FLOAT, ..Default::default() }
}

pub fn attr_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto { name: name.into(), s: s.as_bytes().to_vec(), r#type: attribute_type::STRING, ..Default::default() }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: ints.to_vec(), r#type: attribute_type::INTS, ..Default::default() }
}

#[allow(dead_code)]
pub fn attr_floats(name: &str, floats: &[f32]) -> AttributeProto {
    AttributeProto { name: name.into(), floats: floats.to_vec(), r#type: attribute_type::FLOATS, ..Default::default() }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// A float32 tensor proto with raw little-endian data.
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: data_type::FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A float16 tensor proto (values rounded to nearest) with raw little-endian data.
pub fn tensor_f16(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: data_type::FLOAT16,
        name: name.into(),
        raw_data: data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor proto with raw little-endian data.
pub fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: data_type::INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub struct Graph<'a> {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub weights: &'a Weights<'a>,
    /// Initializer names already added (weights are added once, however often used).
    added: BTreeSet<String>,
    /// Per scope+op counters for unique, stable node names.
    counters: HashMap<String, usize>,
    consts: usize,
    scope: String,
    /// With a sink, large initializers are written out as they are made.
    pub sink: Option<ExternalSink>,
    /// The graph computes in float16 (`--dtype f16`), but inside [`Graph::enter_f32`] regions.
    pub half: bool,
    /// How many [`Graph::enter_f32`] regions are open.
    f32_depth: usize,
}

impl<'a> Graph<'a> {
    pub fn new(weights: &'a Weights<'a>) -> Graph<'a> {
        Graph {
            nodes: Vec::new(),
            initializers: Vec::new(),
            weights,
            added: BTreeSet::new(),
            counters: HashMap::new(),
            consts: 0,
            scope: String::new(),
            sink: None,
            half: false,
            f32_depth: 0,
        }
    }

    /// Run `f` with node names prefixed by `scope` (an upstream module path).
    pub fn scoped<T>(&mut self, scope: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let saved = std::mem::replace(&mut self.scope, scope.to_string());
        let out = f(self);
        self.scope = saved;
        out
    }

    fn fresh_name(&mut self, op: &str) -> String {
        let key = format!("{}/{}", self.scope, op);
        let n = self.counters.entry(key.clone()).or_insert(0);
        *n += 1;
        format!("{key}_{n}")
    }

    /// Add a node with one output named after the node; returns that output.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let name = self.fresh_name(op);
        self.push(op, &name, inputs, &name, attrs);
        name
    }

    /// Add a node whose single output has a given name (graph outputs).
    pub fn op_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, output: &str) {
        let name = self.fresh_name(op);
        self.push(op, &name, inputs, output, attrs);
    }

    fn push(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute: attrs,
            domain: String::new(),
        });
    }

    /// Append an initializer (its bytes moved to the sink, when there is one).
    fn add_init(&mut self, mut t: TensorProto) {
        if let Some(sink) = &mut self.sink {
            sink.take(&mut t);
        }
        self.initializers.push(t);
    }

    /// A float initializer under an explicit name (added once): float32, or float16 where
    /// the graph computes in float16 (outside [`Graph::enter_f32`] regions).
    pub fn init_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        if self.added.insert(name.to_string()) {
            let t = if self.computes_f16() { tensor_f16(name, shape, data) } else { tensor_f32(name, shape, data) };
            self.add_init(t);
        }
        name.to_string()
    }

    /// Whether nodes built now compute in float16.
    pub fn computes_f16(&self) -> bool {
        self.half && self.f32_depth == 0
    }

    /// Open a float32 region (LayerNorm, softmax, BatchNorm, the deformable sampling): in a
    /// float16 graph its float inputs `xs` are cast to float32 and its constants are
    /// float32 until [`Graph::leave_f32`]. A no-op in a float32 graph or an open region.
    pub fn enter_f32(&mut self, xs: &[&str]) -> Vec<String> {
        let cast = self.computes_f16();
        if self.half {
            self.f32_depth += 1;
        }
        xs.iter()
            .map(|x| if cast { self.op("Cast", &[x], vec![attr_i("to", data_type::FLOAT as i64)]) } else { x.to_string() })
            .collect()
    }

    /// Close the region [`Graph::enter_f32`] opened; `x`, its float result, is cast back to
    /// float16 when the graph computes in float16 outside it.
    pub fn leave_f32(&mut self, x: &str) -> String {
        if !self.half {
            return x.to_string();
        }
        self.f32_depth = self.f32_depth.saturating_sub(1);
        if self.computes_f16() { self.op("Cast", &[x], vec![attr_i("to", data_type::FLOAT16 as i64)]) } else { x.to_string() }
    }

    /// Run `f` in a float32 region without casting anything in (tensors built from
    /// constants and shapes, e.g. deformable attention's shared [`super::deform::Sampling`]).
    pub fn in_f32<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.half {
            self.f32_depth += 1;
        }
        let out = f(self);
        if self.half {
            self.f32_depth = self.f32_depth.saturating_sub(1);
        }
        out
    }

    /// A float32 graph input as the graph computes it (cast to float16 in a float16 graph).
    pub fn input(&mut self, name: &str) -> String {
        if self.computes_f16() { self.op("Cast", &[name], vec![attr_i("to", data_type::FLOAT16 as i64)]) } else { name.to_string() }
    }

    /// Publish `x` as the float32 graph output `name`.
    pub fn output(&mut self, x: &str, name: &str) {
        if self.computes_f16() {
            self.op_to("Cast", &[x], vec![attr_i("to", data_type::FLOAT as i64)], name);
        } else {
            self.op_to("Identity", &[x], vec![], name);
        }
    }

    /// An anonymous float32 constant.
    pub fn const_f32(&mut self, shape: &[usize], data: &[f32]) -> String {
        self.consts += 1;
        let name = format!("const_f32_{}", self.consts);
        self.init_f32(&name, shape, data)
    }

    /// A scalar float32 constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32(&[], &[v])
    }

    /// An anonymous int64 constant of any shape.
    pub fn const_i64_shaped(&mut self, shape: &[usize], data: &[i64]) -> String {
        self.consts += 1;
        let name = format!("const_i64_{}", self.consts);
        self.added.insert(name.clone());
        self.add_init(tensor_i64(&name, shape, data));
        name
    }

    /// An int64 initializer under an explicit name, built by `data` only the first time
    /// (a constant several nodes share, e.g. one relative-position index per window size).
    pub fn named_i64(&mut self, name: &str, shape: &[usize], data: impl FnOnce() -> Vec<i64>) -> String {
        if self.added.insert(name.to_string()) {
            self.add_init(tensor_i64(name, shape, &data()));
        }
        name.to_string()
    }

    /// A 1-D int64 constant.
    pub fn const_i64(&mut self, data: &[i64]) -> String {
        self.const_i64_shaped(&[data.len()], data)
    }

    /// The weight `key` as an initializer of the same name; checks the shape when given.
    pub fn param(&mut self, key: &str, expected: Option<&[usize]>) -> Result<String, OnnxError> {
        let (shape, data) = self.weights.get(key, expected)?;
        Ok(self.init_f32(key, &shape, &data))
    }

    /// Error for a node that cannot be built, carrying the node name and op type.
    pub fn node_error(&self, op_type: &str, reason: String) -> OnnxError {
        OnnxError::Node { node: self.scope.clone(), op_type: op_type.to_string(), reason }
    }
}
