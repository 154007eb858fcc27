//! The object tree a checkpoint stores, as inert data.
//!
//! Mirrors what `torch.load(weights_only=True)` returns: dicts (OrderedDict), lists,
//! tuples, scalars, strings and tensors. Objects the allowlist admits only as data
//! (`argparse.Namespace`, `__torch__.*` modules in TorchScript archives, numpy scalars)
//! are kept as [`Value::Object`] with their class name and state, never instantiated.

use super::TensorView;

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
                args.collect_tensors(prefix, out);
                state.collect_tensors(prefix, out);
            }
            _ => {}
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

/// Wrapper keys training scripts put around a state dict, in the order they are preferred
/// (mmcv's `_load_checkpoint` and timm's `load_state_dict` look for the same ones).
pub const WRAPPER_KEYS: &[&str] = &["state_dict", "model", "module", "model_ema", "state_dict_ema"];

/// Find the state dict under the wrapper keys and strip a `module.` prefix shared by every
/// key (DDP). Returns the wrapper path (`model`, `state_dict`, or empty) and the tensors.
pub fn unwrap_state_dict(root: &Value) -> (String, Vec<(String, &TensorView)>) {
    let mut node = root;
    let mut path = Vec::new();
    while !node.is_flat_state_dict() {
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
