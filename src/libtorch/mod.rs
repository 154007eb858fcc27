//! `libtorch/` (cargo feature `libtorch`, off by default): a second reader for files the user
//! trusts — PyTorch's own — and its comparison with comer-port's readers, tensor by tensor and
//! bit for bit (dtype, shape, bytes). docs/libtorch.md says why it exists and how it is built.
//!
//! Two routes, both through the C ABI of `shim.cpp` (linked against the torch 2.13 wheel tch
//! builds on), every tensor arriving as a libtorch tensor (`tch::Tensor`):
//! - TorchScript archives: `torch::jit::load` (torch/csrc/jit/serialization/import.cpp), then
//!   the module's object tree, attribute by attribute;
//! - `torch.save` files, zip and legacy: `torch.load(weights_only=True)`
//!   (torch/serialization.py) in an embedded interpreter, walked by `walker.py`.
//!
//! libtorch's C++ `torch::pickle_load` is not a route: it turns `collections.OrderedDict` into
//! `None` (every saved `model.state_dict()` then fails), and reads neither
//! `_rebuild_tensor_v3` nor legacy files; tch wraps none of it. Both routes execute what the
//! file says (TorchScript code; libtorch's and Python's unpicklers have had memory-safety
//! bugs): comer-port's own readers stay the ones that face untrusted files.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};

use crate::formats::{DType, Format, TensorView};

/// What can go wrong reading a file through libtorch.
#[derive(Debug, thiserror::Error)]
pub enum LibtorchError {
    /// The container is one libtorch has no reader for (safetensors, numpy, a folder).
    #[error(
        "{path}: libtorch has no reader for a {format} input (it reads torch.save files and TorchScript \
         archives); cross-check a .pth/.pt/.bin file instead"
    )]
    NoReader {
        /// The input.
        path: PathBuf,
        /// Its container, as comer-port's readers named it.
        format: &'static str,
    },
    /// libtorch (or PyTorch's unpickler) refused or failed to read the file.
    #[error("{path}: libtorch could not read it: {reason}")]
    Read {
        /// The input.
        path: PathBuf,
        /// libtorch's (or Python's) own message.
        reason: String,
    },
}

/// One tensor as libtorch read it: its dtype in comer-port's names (`f32`, `bf16`, …; another
/// name for a dtype comer-port has no name for), its shape, and its values as a contiguous
/// CPU tensor.
pub struct LtTensor {
    /// Dotted path from the file's root, as comer-port's readers name it.
    pub name: String,
    /// comer-port's dtype name, or libtorch's kind for a dtype comer-port does not know.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    tensor: tch::Tensor,
    nbytes: usize,
}

impl LtTensor {
    fn new(path: &Path, name: String, t: tch::Tensor) -> Result<LtTensor, LibtorchError> {
        let err = |e: tch::TchError| LibtorchError::Read {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` cannot be laid out row-major: {e}"),
        };
        let kind = t.f_kind();
        let dtype = match &kind {
            Ok(k) => dtype_name(*k),
            Err(e) => format!("unknown ({e})"),
        };
        let shape = t.size().into_iter().map(|d| usize::try_from(d).unwrap_or(0)).collect();
        // Row-major, and on the CPU: the bytes comer-port's views materialise.
        let tensor = t.f_contiguous().map_err(err)?;
        let nbytes = match kind {
            Ok(k) => tensor.numel() * k.elt_size_in_bytes(),
            Err(_) => 0,
        };
        Ok(LtTensor { name, dtype, shape, tensor, nbytes })
    }

    /// The values, row-major, in the machine's byte order (torch.load swaps a big-endian
    /// archive to it).
    pub fn bytes(&self) -> &[u8] {
        let ptr = self.tensor.data_ptr() as *const u8;
        if self.nbytes == 0 || ptr.is_null() {
            return &[];
        }
        // SAFETY: `tensor` is a contiguous CPU tensor of `nbytes` bytes from `data_ptr`, owned
        // by `self` and never written while borrowed.
        unsafe { std::slice::from_raw_parts(ptr, self.nbytes) }
    }
}

/// comer-port's name of a libtorch kind, or the kind's own name for one it has no name for.
fn dtype_name(k: tch::Kind) -> String {
    use tch::Kind as K;
    let d = match k {
        K::Double => DType::F64,
        K::Float => DType::F32,
        K::Half => DType::F16,
        K::BFloat16 => DType::BF16,
        K::Int64 => DType::I64,
        K::Int => DType::I32,
        K::Int16 => DType::I16,
        K::Int8 => DType::I8,
        K::Uint8 => DType::U8,
        K::Bool => DType::Bool,
        other => return format!("{other:?}"),
    };
    d.name().to_string()
}

/// The source of the Python walker the interpreter runs.
const WALKER: &str = include_str!("walker.py");
/// Where the wheel's torch package lives, for the interpreter's `sys.path` (set by build.rs).
const TORCH_SITE: &str = env!("COMER_PORT_TORCH_SITE");

type TensorFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut torch_sys::C_tensor);

unsafe extern "C" {
    fn comer_lt_torchscript(path: *const c_char, ctx: *mut c_void, f: TensorFn) -> *mut c_char;
    fn comer_lt_torch_load(
        path: *const c_char,
        site: *const c_char,
        walker: *const c_char,
        ctx: *mut c_void,
        f: TensorFn,
    ) -> *mut c_char;
    fn comer_lt_free(msg: *mut c_char);
}

/// Collects the tensors the shim calls back with.
struct Sink(Vec<(String, tch::Tensor)>);

unsafe extern "C" fn on_tensor(ctx: *mut c_void, name: *const c_char, t: *mut torch_sys::C_tensor) {
    // SAFETY: `ctx` is the `Sink` passed to the shim below, alive for the call; `name` is a
    // NUL-terminated string valid during the callback; `t` is a new `torch::Tensor*` whose
    // ownership passes to us (the shim never frees it).
    unsafe {
        let sink = &mut *(ctx as *mut Sink);
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        sink.0.push((name, tch::Tensor::from_ptr(t)));
    }
}

/// Why a full-model pickle (`torch.save(model)`) is not read through libtorch: PyTorch reads
/// it only by constructing the model (`weights_only=False`, the model's classes importable),
/// which runs its code; comer-port reads it as data (its `_parameters` / `_buffers`).
pub fn full_model_reason(what: &str) -> String {
    format!(
        "{what}: PyTorch reads a full-model pickle only by constructing the model (weights_only=False), \
         which runs its code; not cross-checked"
    )
}

/// Every tensor of `path` as libtorch reads it, in its file order, under the dotted path
/// comer-port's readers use. `format` is what comer-port's readers found the container to be:
/// it picks the route (TorchScript → `torch::jit::load`, torch.save → `torch.load`).
pub fn read(path: &Path, format: Format) -> Result<Vec<LtTensor>, LibtorchError> {
    let read_err = |reason: String| LibtorchError::Read { path: path.to_path_buf(), reason };
    let c = |s: &str| CString::new(s).map_err(|_| read_err(format!("`{s}` holds a NUL byte")));
    let c_path = c(&path.to_string_lossy())?;
    let mut sink = Sink(Vec::new());
    let ctx = &mut sink as *mut Sink as *mut c_void;
    // SAFETY: every pointer is valid for the call (CStrings and `sink` outlive it); the shim
    // catches every C++ exception and returns an owned message or null.
    let msg = unsafe {
        match format {
            Format::TorchScript => comer_lt_torchscript(c_path.as_ptr(), ctx, on_tensor),
            Format::TorchZip | Format::TorchLegacy => {
                let (site, walker) = (c(TORCH_SITE)?, c(WALKER)?);
                comer_lt_torch_load(c_path.as_ptr(), site.as_ptr(), walker.as_ptr(), ctx, on_tensor)
            }
            other => return Err(LibtorchError::NoReader { path: path.to_path_buf(), format: other.name() }),
        }
    };
    if !msg.is_null() {
        // SAFETY: a NUL-terminated string the shim allocated; freed once, by the shim.
        let text = unsafe {
            let s = CStr::from_ptr(msg).to_string_lossy().into_owned();
            comer_lt_free(msg);
            s
        };
        return Err(read_err(one_line(&text)));
    }
    sink.0.into_iter().map(|(name, t)| LtTensor::new(path, name, t)).collect()
}

/// libtorch's or Python's message on one line: without the C++ backtrace libtorch appends
/// (`Exception raised from …`) and terminal escapes; of torch.load's long weights-only
/// refusal, its first line and the line naming the refused global.
fn one_line(text: &str) -> String {
    let text = text.split("Exception raised from").next().unwrap_or(text);
    let clean = |l: &str| -> String {
        let mut out = String::new();
        let mut chars = l.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ … letter
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out.trim().to_string()
    };
    let lines: Vec<String> = text.lines().map(clean).filter(|l| !l.is_empty()).collect();
    match lines.iter().find(|l| l.starts_with("WeightsUnpickler error:")) {
        Some(why) => format!("{} … {why}", lines[0]),
        None => lines.join(" "),
    }
}

/// A tensor's dtype and shape, as one reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// One key of a side-by-side listing: what each reader found under it, and how they differ.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Dotted path.
    pub key: String,
    /// comer-port's reader (absent: it has no tensor under this key).
    pub ours: Option<Entry>,
    /// libtorch (absent: it has no tensor under this key).
    pub libtorch: Option<Entry>,
    /// Why the two differ (`None`: same dtype, shape and bytes).
    pub differs: Option<String>,
}

/// Both readers' tensor lists, key by key: comer-port's order, then keys only libtorch has.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrossRead {
    /// Every key.
    pub rows: Vec<Row>,
}

impl CrossRead {
    /// Whether the readers agree on every key.
    pub fn agrees(&self) -> bool {
        self.rows.iter().all(|r| r.differs.is_none())
    }

    /// The first key where they part: its index and the row.
    pub fn first_difference(&self) -> Option<(usize, &Row)> {
        self.rows.iter().enumerate().find(|(_, r)| r.differs.is_some())
    }

    /// The verdict line, and when the readers differ both tensor lists side by side: one line
    /// per key (`!=` before a key where they differ), each side's dtype and shape (`-`: no
    /// tensor there), and why they differ.
    pub fn render(&self) -> String {
        let n = self.rows.len();
        let Some((_, first)) = self.first_difference() else {
            return format!("libtorch   agrees: {n} tensors bit for bit (dtype, shape, bytes)\n");
        };
        let cell = |e: &Option<Entry>| e.as_ref().map_or("-".to_string(), |e| format!("{} {:?}", e.dtype, e.shape));
        let bad = self.rows.iter().filter(|r| r.differs.is_some()).count();
        let mut out = format!(
            "libtorch   DIFFERS on {bad} of {n} keys (first `{}`: {})\n",
            first.key,
            first.differs.as_deref().unwrap_or_default()
        );
        let w = self.rows.iter().map(|r| r.key.len()).max().unwrap_or(4).clamp(4, 80);
        let cw = self.rows.iter().map(|r| cell(&r.ours).len()).max().unwrap_or(10).max(10);
        let lw = self.rows.iter().map(|r| cell(&r.libtorch).len()).max().unwrap_or(8).max(8);
        out += &format!("   {:<w$}  {:<cw$}  {:<lw$}  why\n", "name", "comer-port", "libtorch");
        for r in &self.rows {
            let mark = if r.differs.is_some() { "!=" } else { "  " };
            let line = format!(
                "{mark} {:<w$}  {:<cw$}  {:<lw$}  {}",
                r.key,
                cell(&r.ours),
                cell(&r.libtorch),
                r.differs.as_deref().unwrap_or("")
            );
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

/// The first byte where `a` and `b` differ, as an element index of a `size`-byte dtype.
fn first_differing_element(a: &[u8], b: &[u8], size: usize) -> usize {
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    at / size.max(1)
}

/// Compare comer-port's tensors (`ours`) with libtorch's (`theirs`), key by key, bit for bit:
/// the same keys, and under each the same dtype, shape and row-major little-endian bytes.
pub fn cross_read(ours: &[(String, &TensorView)], theirs: &[LtTensor]) -> CrossRead {
    let mut by_key: HashMap<&str, Vec<&LtTensor>> = HashMap::new();
    for t in theirs {
        by_key.entry(t.name.as_str()).or_default().push(t);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(ours.len());
    for (key, view) in ours {
        let n = seen.entry(key.as_str()).or_insert(0);
        let lt = by_key.get(key.as_str()).and_then(|v| v.get(*n)).copied();
        *n += 1;
        let mine = Entry { dtype: view.dtype.name().to_string(), shape: view.shape.clone() };
        let differs = match lt {
            None => Some("libtorch has no tensor under this key".to_string()),
            Some(t) if t.dtype != mine.dtype => Some(format!("dtype {} here, {} through libtorch", mine.dtype, t.dtype)),
            Some(t) if t.shape != mine.shape => {
                Some(format!("shape {:?} here, {:?} through libtorch", mine.shape, t.shape))
            }
            Some(t) => {
                let same = match view.le_bytes_borrowed() {
                    Some(b) => b == t.bytes(),
                    None => view.to_le_bytes() == t.bytes(),
                };
                view.release();
                (!same).then(|| {
                    let ours = view.to_le_bytes();
                    let i = first_differing_element(&ours, t.bytes(), view.dtype.size());
                    format!("values differ bit for bit (first at flat element {i})")
                })
            }
        };
        rows.push(Row {
            key: key.clone(),
            ours: Some(mine),
            libtorch: lt.map(|t| Entry { dtype: t.dtype.clone(), shape: t.shape.clone() }),
            differs,
        });
    }
    for t in theirs {
        let n = seen.entry(t.name.as_str()).or_insert(0);
        if *n > 0 {
            *n -= 1;
            continue;
        }
        rows.push(Row {
            key: t.name.clone(),
            ours: None,
            libtorch: Some(Entry { dtype: t.dtype.clone(), shape: t.shape.clone() }),
            differs: Some("comer-port's reader has no tensor under this key".into()),
        });
    }
    CrossRead { rows }
}
