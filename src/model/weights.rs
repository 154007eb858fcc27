//! Weights looked up by target state-dict name, with shape and dtype checks, and a final
//! account of missing and unexpected keys (burn-store's load report, with near-miss hints).
//!
//! Mirrors `load_state_dict(strict=True)` on upstream's modules: every parameter and
//! buffer name must match. int64 buffers (`relative_position_index`, `num_batches_tracked`)
//! may be absent (artifacts written with `--no-buffers`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::error::{KeyHint, ModelError, VitError, near_miss};
use crate::formats::Checkpoint;

/// Tensors by name — the crate's one named-tensor store — plus the bookkeeping of which
/// names a strict load read ([`Store::root`] / [`Store::finish`], for the ViT-CoMer forward).
/// The plain-ViT forwards read it directly ([`Store::get`], [`Store::opt`], …), without the
/// accounting.
#[derive(Debug, Clone, Default)]
pub struct Store {
    tensors: BTreeMap<String, Tensor>,
    /// A mapped artifact whose tensors are read on demand ([`Store::from_safetensors`]):
    /// each is copied out when asked for and its pages leave the resident set, so the
    /// model's own copy is the only one.
    mapped: Option<std::sync::Arc<Mapped>>,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
}

/// A mapped checkpoint and the position of each name in its tensor list.
#[derive(Debug)]
struct Mapped {
    /// The state dict's views (sharing the checkpoint's mapped storages).
    views: Vec<crate::formats::TensorView>,
    index: BTreeMap<String, usize>,
    /// Every tensor read cast to f32 (the plain-ViT forwards' reading), else in its own dtype.
    f32: bool,
}

impl Mapped {
    /// Tensor `name` as candle holds it, in its stored dtype (f32 when `self.f32`); its mapped
    /// pages released.
    fn tensor(&self, name: &str) -> Option<Result<Tensor, ModelError>> {
        let view = self.views.get(*self.index.get(name)?)?;
        if self.f32 {
            let t = Tensor::from_vec(view.to_f32(), view.shape.clone(), &Device::Cpu);
            view.release();
            return Some(t.map_err(ModelError::from));
        }
        let dtype = match view.dtype {
            crate::formats::DType::F32 => DType::F32,
            crate::formats::DType::F16 => DType::F16,
            crate::formats::DType::BF16 => DType::BF16,
            crate::formats::DType::F64 => DType::F64,
            crate::formats::DType::I64 => DType::I64,
            crate::formats::DType::U8 => DType::U8,
            other => {
                return Some(Err(ModelError::Dtype {
                    name: name.to_string(),
                    expected: "F32, F16, BF16, F64, I64 or U8".into(),
                    got: other.name().to_string(),
                }));
            }
        };
        let t = match view.le_bytes_borrowed() {
            Some(b) => Tensor::from_raw_buffer(b, dtype, &view.shape, &Device::Cpu),
            None => Tensor::from_raw_buffer(&view.to_le_bytes(), dtype, &view.shape, &Device::Cpu),
        };
        view.release();
        Some(t.map_err(ModelError::from))
    }
}

impl Store {
    /// Tensors by target key, none read yet.
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Store {
        Store { tensors: tensors.into_iter().collect(), ..Store::default() }
    }

    /// A safetensors file, mapped: each tensor is copied out when the model asks for it.
    pub fn from_safetensors(path: &Path) -> Result<Store, ModelError> {
        let ck = crate::formats::open(path).map_err(|e| ModelError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Store::mapped(&ck, false))
    }

    /// A checkpoint's state dict (wrapper stripped) read on demand: each tensor is cast to f32
    /// when a forward asks for it and its pages leave the resident set, so only what the
    /// caller keeps is held (mapping parity streams a model block by block through it).
    pub fn lazy_f32(ck: &Checkpoint) -> Store {
        Store::mapped(ck, true)
    }

    fn mapped(ck: &Checkpoint, f32: bool) -> Store {
        let (_, sd) = ck.state_dict();
        let index = sd.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let views = sd.into_iter().map(|(_, v)| v.clone()).collect();
        Store { mapped: Some(std::sync::Arc::new(Mapped { views, index, f32 })), ..Store::default() }
    }

    /// Tensor `name`: held, or copied out of the mapped file.
    fn lookup(&self, name: &str) -> Option<Result<Tensor, ModelError>> {
        match self.tensors.get(name) {
            Some(t) => Some(Ok(t.clone())),
            None => self.mapped.as_ref()?.tensor(name),
        }
    }

    /// The lookup at the root of the state dict (no prefix).
    pub fn root(&self) -> Vb<'_> {
        Vb { store: self, prefix: String::new() }
    }

    /// After the model was built: missing keys first, then unexpected ones, each with hints.
    pub fn finish(&self) -> Result<(), ModelError> {
        let used = self.used.borrow();
        let missing = self.missing.borrow();
        let unexpected: Vec<&String> = self
            .names()
            .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if !missing.is_empty() {
            let keys = missing
                .iter()
                .map(|k| KeyHint { key: k.clone(), hint: near_miss(k, unexpected.iter().copied()) })
                .collect();
            return Err(ModelError::MissingKeys { keys });
        }
        if !unexpected.is_empty() {
            let mut keys: Vec<KeyHint> = unexpected
                .iter()
                .map(|k| KeyHint { key: (*k).clone(), hint: near_miss(k, used.iter()) })
                .collect();
            keys.sort_by(|a, b| a.key.cmp(&b.key));
            return Err(ModelError::UnexpectedKeys { keys });
        }
        Ok(())
    }
}

/// The plain-ViT forwards' reading (`model::plain_vit`): no accounting, f32 tensors.
impl Store {
    /// The checkpoint's state dict (wrapper stripped), every tensor cast to f32; each mapped
    /// record's pages leave the resident set once copied.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Store, VitError> {
        let (_, tensors) = ckpt.state_dict();
        let mut w = Store::default();
        for (name, view) in tensors {
            w.insert_f32(&name, view.to_f32(), &view.shape)?;
            view.release();
        }
        Ok(w)
    }

    /// Insert one tensor from its elements and shape.
    pub fn insert_f32(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<(), VitError> {
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(VitError::tensor(name))?;
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    /// Insert one tensor as it is.
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// Whether a tensor is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.mapped.as_ref().is_some_and(|m| m.index.contains_key(name))
    }

    /// Every name, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.names().map(String::as_str)
    }

    /// Every name: the held ones, then the mapped ones not held.
    fn names(&self) -> impl Iterator<Item = &String> {
        let mapped = self.mapped.as_ref().map(|m| m.index.keys().filter(|k| !self.tensors.contains_key(*k)));
        self.tensors.keys().chain(mapped.into_iter().flatten())
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<Tensor, VitError> {
        match self.lookup(name) {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(VitError::Unreadable { key: name.to_string(), reason: e.to_string() }),
            None => Err(VitError::MissingTensor { key: name.to_string() }),
        }
    }

    /// The tensor called `name`, if present (and readable).
    pub fn opt(&self, name: &str) -> Option<Tensor> {
        self.lookup(name).and_then(Result::ok)
    }

    /// The tensor called `name`, checked to have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, VitError> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(VitError::Shape {
                key: name.to_string(),
                got: t.dims().to_vec(),
                expected: format!("{shape:?}"),
            });
        }
        Ok(t)
    }

    /// Number of blocks `prefix.0.`, `prefix.1.`, … for which `prefix.N.<probe>` exists.
    pub fn count_blocks(&self, prefix: &str, probe: &str) -> usize {
        (0..)
            .take_while(|i| self.contains(&format!("{prefix}.{i}.{probe}")))
            .count()
    }
}

/// A prefix into a [`Store`]: `vb.pp("norm1").get("weight", &[d])` reads `norm1.weight`.
#[derive(Clone)]
pub struct Vb<'a> {
    store: &'a Store,
    prefix: String,
}

impl<'a> Vb<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vb { store: self.store, prefix }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// A float32 parameter of exactly `shape` (stored as f32, f16 or bf16). A missing key is recorded (reported by
    /// [`Store::finish`]) and answered with zeros so that every missing key is listed at once.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let full = self.full(name);
        let Some(t) = self.store.lookup(&full) else {
            self.store.missing.borrow_mut().push(full);
            return Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?);
        };
        let t = t?;
        self.store.used.borrow_mut().insert(full.clone());
        // Half-precision artifacts (`import --dtype f16|bf16`) run in f32, as
        // `model.float()` would run them upstream; other dtypes are not parameters.
        let t = match t.dtype() {
            DType::F32 => t.clone(),
            DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
            other => {
                return Err(ModelError::Dtype { name: full, expected: "F32 (or F16/BF16)".into(), got: format!("{other:?}") });
            }
        };
        if t.dims() != shape {
            return Err(ModelError::Shape { name: full, expected: shape.to_vec(), got: t.dims().to_vec() });
        }
        Ok(t)
    }

    /// A float32 parameter read as a flat vector.
    pub fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        Ok(self.get(name, shape)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// An optional int64 buffer (may be absent): checked for shape and dtype when present.
    pub fn buffer_i64(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<i64>>, ModelError> {
        let full = self.full(name);
        let Some(t) = self.store.lookup(&full) else { return Ok(None) };
        let t = t?;
        self.store.used.borrow_mut().insert(full.clone());
        if t.dtype() != DType::I64 {
            return Err(ModelError::Dtype { name: full, expected: "I64".into(), got: format!("{:?}", t.dtype()) });
        }
        if t.dims() != shape {
            return Err(ModelError::Shape { name: full, expected: shape.to_vec(), got: t.dims().to_vec() });
        }
        Ok(Some(t.flatten_all()?.to_vec1::<i64>()?))
    }

    /// The full name of `name` under this prefix (for error messages).
    pub fn name(&self, name: &str) -> String {
        self.full(name)
    }
}
