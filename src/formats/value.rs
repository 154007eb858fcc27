//! The object tree a checkpoint stores, as inert data.
//!
//! Mirrors what `torch.load(weights_only=True)` returns: dicts (OrderedDict), lists,
//! tuples, scalars, strings and tensors. Objects the allowlist admits only as data
//! (`argparse.Namespace`, `__torch__.*` modules in TorchScript archives, numpy scalars,
//! the `torch.nn.modules.*` / `timm.*` modules of a full-model pickle) are kept as
//! [`Value::Object`] with their class name and state, never instantiated.
//!
//! A full-model pickle (`torch.save(model)`) reads as the state dict `model.state_dict()`
//! would give (torch/nn/modules/module.py `Module._save_to_state_dict` and `state_dict`):
//! each module's `_parameters`, then its persistent `_buffers`, then its `_modules`, under
//! dotted names.

use super::TensorView;

/// Deepest container nesting (dict in list in tuple …) of a value tree: the pickle VM refuses
/// deeper trees, and what walks a tree (a module's state dict) stops there.
pub const MAX_NESTING: usize = 200;

/// One node of a checkpoint's object tree.
#[derive(Debug, Clone)]
pub enum Value {
    /// Python `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// An integer too large for i64 (pickle LONG), kept as its decimal text.
    BigInt(String),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// Dict in insertion order (OrderedDict and dict alike).
    Dict(Vec<(Value, Value)>),
    /// A tensor (a lazy view over its storage).
    Tensor(TensorView),
    /// An allowlisted object kept as data: `module.name` and its constructor args / state.
    Object {
        /// `module.name` of the class.
        class: String,
        /// Its constructor arguments (`REDUCE`/`NEWOBJ`).
        args: Box<Value>,
        /// Its `BUILD` state (`None` when there is none).
        state: Box<Value>,
    },
}

impl Value {
    /// Short type name for reports (`dict`, `list`, `tensor`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Object { .. } => "object",
        }
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Look a string key up in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Key text of a dict key for dotted paths (strings as is, ints as digits).
    fn key_text(k: &Value) -> String {
        match k {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            other => format!("<{}>", other.kind()),
        }
    }

    /// Append every tensor below this value to `out` under dotted paths.
    pub fn collect_tensors<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a TensorView)>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match self {
            Value::Tensor(t) => out.push((prefix.to_string(), t)),
            Value::Dict(items) => {
                for (k, v) in items {
                    v.collect_tensors(&join(&Value::key_text(k)), out);
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                for (i, v) in items.iter().enumerate() {
                    v.collect_tensors(&join(&i.to_string()), out);
                }
            }
            Value::Object { args, state, .. } => {
                if self.is_module() {
                    self.module_state_dict(prefix, out, 0);
                } else {
                    args.collect_tensors(prefix, out);
                    state.collect_tensors(prefix, out);
                }
            }
            _ => {}
        }
    }

    /// A `torch.nn.Module` as a full-model pickle stores it: an object of a module class the
    /// pickle VM admits ([`MODULE_CLASS_PREFIXES`]) whose state, its `__dict__`, holds
    /// `_parameters`, `_buffers` and `_modules`.
    pub fn is_module(&self) -> bool {
        match self {
            Value::Object { class, state, .. } => {
                is_module_class(class) && ["_parameters", "_buffers", "_modules"].iter().all(|k| state.get(k).is_some())
            }
            _ => false,
        }
    }

    /// `Module.state_dict()` of a module object: its parameters (`None` skipped), its buffers
    /// except those in `_non_persistent_buffers_set`, then each submodule under
    /// `prefix.name.`. Depth-bounded like the pickle VM that built the tree.
    fn module_state_dict<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a TensorView)>, depth: usize) {
        let Value::Object { state, .. } = self else { return };
        if depth > MAX_NESTING {
            return;
        }
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        let entries = |name: &str| match state.get(name) {
            Some(Value::Dict(items)) => items.as_slice(),
            _ => &[],
        };
        let non_persistent: Vec<&str> = match state.get("_non_persistent_buffers_set") {
            Some(Value::List(names) | Value::Tuple(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for (k, v) in entries("_parameters") {
            if let Value::Tensor(t) = v {
                out.push((join(&Value::key_text(k)), t));
            }
        }
        for (k, v) in entries("_buffers") {
            let name = Value::key_text(k);
            if let Value::Tensor(t) = v
                && !non_persistent.contains(&name.as_str())
            {
                out.push((join(&name), t));
            }
        }
        for (k, v) in entries("_modules") {
            if v.is_module() {
                v.module_state_dict(&join(&Value::key_text(k)), out, depth + 1);
            }
        }
    }

    /// True when this is a dict holding at least one tensor directly.
    fn is_flat_state_dict(&self) -> bool {
        match self {
            Value::Dict(items) => items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))),
            _ => false,
        }
    }
}

/// Module paths whose classes a full-model pickle may hold as inert objects: PyTorch's own
/// layers and timm's models and layers (timm's DeiT and BEiT included).
pub const MODULE_CLASS_PREFIXES: &[&str] = &["torch.nn.modules.", "timm."];

/// Whether `module.Name` names a class under [`MODULE_CLASS_PREFIXES`]: the name starts with
/// an upper-case letter, as Python classes do (functions there stay refused).
pub fn is_module_class(full: &str) -> bool {
    let Some((module, name)) = full.rsplit_once('.') else { return false };
    MODULE_CLASS_PREFIXES.iter().any(|p| module.starts_with(p) || format!("{module}.") == *p)
        && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Wrapper keys training scripts put around a state dict, in the order they are preferred
/// (mmcv's `_load_checkpoint` and timm's `load_state_dict` look for the same ones).
pub const WRAPPER_KEYS: &[&str] = &["state_dict", "model", "module", "model_ema", "state_dict_ema"];

/// The node holding the state dict (a dict of tensors, or a module object) and the wrapper
/// keys above it.
fn state_dict_node(root: &Value) -> (Vec<&'static str>, &Value) {
    let mut node = root;
    let mut path = Vec::new();
    while !node.is_flat_state_dict() && !node.is_module() {
        let next = WRAPPER_KEYS
            .iter()
            .find_map(|k| node.get(k).map(|v| (*k, v)));
        match next {
            Some((k, v)) => {
                path.push(k);
                node = v;
            }
            None => break,
        }
    }
    (path, node)
}

/// What a full-model pickle holds, in words (`full-model pickle: timm VisionTransformer,
/// read as its state dict`), or `None` when the state dict is a plain dict.
pub fn full_model(root: &Value) -> Option<String> {
    let (_, node) = state_dict_node(root);
    let Value::Object { class, .. } = node else { return None };
    if !node.is_module() {
        return None;
    }
    let library = class.split('.').next().unwrap_or_default();
    let name = class.rsplit('.').next().unwrap_or_default();
    Some(format!("full-model pickle: {library} {name}, read as its state dict"))
}

/// Find the state dict under the wrapper keys and strip a `module.` prefix shared by every
/// key (DDP). A module object (a full-model pickle) gives its `state_dict()` names. Returns
/// the wrapper path (`model`, `state_dict`, or empty) and the tensors.
pub fn unwrap_state_dict(root: &Value) -> (String, Vec<(String, &TensorView)>) {
    let (mut path, node) = state_dict_node(root);
    let mut tensors = Vec::new();
    node.collect_tensors("", &mut tensors);
    if !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in tensors.iter_mut() {
            *k = k["module.".len()..].to_string();
        }
        path.push("module");
    }
    (path.join("."), tensors)
}
