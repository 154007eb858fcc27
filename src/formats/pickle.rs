//! A small, restricted pickle VM: rebuilds the object tree of a checkpoint without ever
//! calling anything.
//!
//! Mirrors `torch/_weights_only_unpickler.py` (PyTorch's weights-only `Unpickler`): the same
//! idea of an opcode allowlist and a fixed set of globals, each of which is *interpreted*
//! here (an `OrderedDict` becomes a [`Value::Dict`], `_rebuild_tensor_v2` becomes a validated
//! [`TensorView`]) rather than looked up and called. An unknown global is refused with its
//! module and name the moment the GLOBAL / STACK_GLOBAL opcode names it, before any REDUCE.
//!
//! Bounds: every declared length is checked against the bytes left before anything is
//! allocated; memo entries, stack depth, MARK depth and container nesting are capped by the
//! named constants below, and one byte budget counts everything the VM materialises — each
//! value, string and container it builds and every copy it makes (DUP, BINGET/GET,
//! MEMOIZE/PUT of an immutable value, the memo's snapshot of a memoised container when it is
//! complete) — cumulatively, so neither memory nor time can blow up like a "billion laughs"
//! or a DUP/BINGET loop over a large string. The budget is [`Ctx::max_bytes`] when set, else
//! [`BUDGET_SLACK`] + [`BUDGET_PER_BYTE`] × the pickle bytes read so far.

use super::tensor::checked_numel;
use super::{DType, FormatError, Storage, TensorView, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Most memo slots a pickle may fill.
pub const MAX_MEMO: usize = 1 << 20;
/// Deepest value stack.
pub const MAX_STACK: usize = 1 << 20;
/// Deepest MARK nesting.
pub const MAX_MARKS: usize = 4096;
/// Deepest container nesting (dict in list in tuple …): the bound of every value tree.
pub use super::value::MAX_NESTING;
/// Longest LONG1/LONG4 integer, in bytes.
pub const MAX_LONG_BYTES: usize = 64;
/// Default byte budget: this many materialised bytes per pickle byte read so far …
/// (real checkpoints use 35–65: docs/guarantees.md) …
pub const BUDGET_PER_BYTE: u64 = 128;
/// … plus this many bytes.
pub const BUDGET_SLACK: u64 = 64 << 20;
/// What one value node counts for in the budget (its inline size; strings, bytes and the
/// shape of a tensor add their lengths).
pub const NODE_BYTES: u64 = std::mem::size_of::<Value>() as u64;

/// Which allowlisted global a GLOBAL opcode named (kept on the stack as inert data).
const GLOBAL_CLASS: &str = "$global";
/// A storage returned by persistent_load: `args` holds a 1-D view (the storage, or a legacy
/// view into a root storage), `state` its key. Unforgeable: no allowlisted global starts with `$`.
pub const STORAGE_CLASS: &str = "$storage";

/// What the VM is reading, for error messages and options.
pub struct Ctx<'a> {
    /// The file being read.
    pub path: &'a Path,
    /// Entry inside the container (`archive/data.pkl`, `object pickle`, …).
    pub entry: &'a str,
    /// Admit `__torch__.*` classes and `torch.jit._pickle.*` helpers as inert data.
    pub torchscript: bool,
    /// Skip tensor construction (tensors become `None`): used by the legacy reader's first
    /// pass, which only needs to learn the storage dtypes.
    pub dry_run: bool,
    /// Refuse bytes after STOP.
    pub strict_end: bool,
    /// Byte budget for everything this pickle materialises (copies included); `None`: the
    /// default, [`BUDGET_SLACK`] + [`BUDGET_PER_BYTE`] × pickle bytes read so far.
    pub max_bytes: Option<u64>,
}

/// What a pickle's persistent ids resolve to: a storage view (see [`storage_value`]).
pub type PersistentLoad<'a> = dyn FnMut(&Value, usize) -> Result<Value, FormatError> + 'a;

/// A storage as the VM sees it: a 1-D view over its bytes, tagged so rebuild functions can
/// tell it from a tensor.
pub fn storage_value(view: TensorView, key: &str) -> Value {
    Value::Object {
        class: STORAGE_CLASS.into(),
        args: Box::new(Value::Tensor(view)),
        state: Box::new(Value::Str(key.into())),
    }
}

/// A 1-D contiguous view over all of `storage` as `dtype` (bytes beyond the last whole
/// element are ignored).
pub fn whole_storage_view(dtype: DType, storage: Arc<Storage>) -> TensorView {
    let n = storage.len() / dtype.size();
    TensorView {
        dtype,
        shape: vec![n],
        strides: vec![1],
        offset: 0,
        big_endian: false,
        storage,
    }
}

/// One value on the stack with its bookkeeping.
struct Entry {
    v: Value,
    /// Container nesting depth of `v` (scalars 0).
    depth: usize,
    /// Budget bytes of `v` (what a copy of it costs).
    bytes: u64,
    /// Memo slots that alias this (mutable) value; refreshed when it leaves the stack.
    memo: Vec<u32>,
    /// String/int keys already in a dict → their position (built lazily), for duplicates.
    keys: Option<HashMap<String, usize>>,
}

impl Entry {
    fn new(v: Value, depth: usize, bytes: u64) -> Self {
        Entry {
            v,
            depth,
            bytes,
            memo: Vec::new(),
            keys: None,
        }
    }
    fn scalar(v: Value) -> Self {
        let b = NODE_BYTES + heap_bytes(&v);
        Entry::new(v, 0, b)
    }
}

/// Bytes a value owns outside its node, not counting child values.
fn heap_bytes(v: &Value) -> u64 {
    let n = match v {
        Value::Str(s) | Value::BigInt(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Tensor(t) => (t.shape.len() + t.strides.len()) * 8,
        Value::Object { class, .. } => class.len(),
        _ => 0,
    };
    n as u64
}

/// Budget bytes of a whole value tree (only for small values built outside the VM: the
/// storages persistent_load returns). Depth-bounded like the VM.
fn tree_bytes(v: &Value, depth: usize) -> u64 {
    let own = NODE_BYTES + heap_bytes(v);
    if depth > MAX_NESTING {
        return own;
    }
    let kids: u64 = match v {
        Value::List(x) | Value::Tuple(x) => x.iter().map(|c| tree_bytes(c, depth + 1)).sum(),
        Value::Dict(x) => x.iter().map(|(k, c)| tree_bytes(k, depth + 1) + tree_bytes(c, depth + 1)).sum(),
        Value::Object { args, state, .. } => tree_bytes(args, depth + 1) + tree_bytes(state, depth + 1),
        _ => 0,
    };
    own.saturating_add(kids)
}

struct Vm<'a, 'b> {
    ctx: &'a Ctx<'a>,
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Entry>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, usize, u64)>,
    /// Memo slots aliased by a container still on the stack (slot → entries).
    open: HashMap<u32, usize>,
    /// Where this pickle starts in `data` (the default budget grows with bytes read).
    start: usize,
    /// Budget bytes materialised so far.
    used: u64,
    load: &'b mut PersistentLoad<'b>,
}

/// Run one pickle from `data[start..]`. Returns the value and the offset just after STOP.
pub fn unpickle(
    ctx: &Ctx<'_>,
    data: &[u8],
    start: usize,
    load: &mut PersistentLoad<'_>,
) -> Result<(Value, usize), FormatError> {
    let mut vm = Vm {
        ctx,
        data,
        pos: start,
        op_pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        open: HashMap::new(),
        start,
        used: 0,
        load,
    };
    let v = vm.run()?;
    if ctx.strict_end && vm.pos != data.len() {
        return Err(vm.err_at(vm.pos, format!("{} bytes after STOP", data.len() - vm.pos)));
    }
    Ok((v, vm.pos))
}

/// Budget bytes of a key's entry in the duplicate-key index.
fn key_index_bytes(k: &Value) -> Option<u64> {
    match k {
        Value::Str(s) => Some(NODE_BYTES + 1 + s.len() as u64),
        Value::Int(_) => Some(NODE_BYTES + 21),
        _ => None,
    }
}

/// The key text used for duplicate detection (strings and ints; other keys are not tracked).
fn key_repr(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(format!("s{s}")),
        Value::Int(i) => Some(format!("i{i}")),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

impl<'a, 'b> Vm<'a, 'b> {
    fn err_at(&self, offset: usize, reason: impl Into<String>) -> FormatError {
        FormatError::Pickle {
            path: self.ctx.path.to_path_buf(),
            entry: self.ctx.entry.to_string(),
            offset,
            reason: reason.into(),
        }
    }
    fn err(&self, reason: impl Into<String>) -> FormatError {
        self.err_at(self.op_pos, reason)
    }
    fn bad_tensor(&self, reason: impl Into<String>) -> FormatError {
        FormatError::bad_tensor(
            self.ctx.path,
            format!("{} @ byte {}", self.ctx.entry, self.op_pos),
            reason,
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                FormatError::truncated(
                    self.ctx.path,
                    format!("{} @ byte {}", self.ctx.entry, self.op_pos),
                    n as u64,
                    self.data.len().saturating_sub(self.pos) as u64,
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_u64(&mut self) -> Result<usize, FormatError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }
    fn line(&mut self) -> Result<&'a str, FormatError> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated text line"))?;
        let line = &rest[..nl];
        self.pos += nl + 1;
        std::str::from_utf8(line).map_err(|_| self.err("invalid UTF-8 in a text argument"))
    }
    fn utf8(&self, b: &[u8]) -> Result<String, FormatError> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("invalid UTF-8 in a string"))
    }

    fn push(&mut self, e: Entry) -> Result<(), FormatError> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("stack deeper than {MAX_STACK}")));
        }
        if e.depth > MAX_NESTING {
            return Err(self.err(format!("containers nested deeper than {MAX_NESTING}")));
        }
        self.stack.push(e);
        Ok(())
    }
    /// The budget now: fixed, or growing with the pickle bytes read.
    fn budget(&self) -> u64 {
        match self.ctx.max_bytes {
            Some(b) => b,
            None => (self.pos.saturating_sub(self.start) as u64)
                .saturating_mul(BUDGET_PER_BYTE)
                .saturating_add(BUDGET_SLACK),
        }
    }
    /// Count `n` materialised bytes against the budget, refusing before they are built.
    fn charge(&mut self, n: u64) -> Result<(), FormatError> {
        self.used = self.used.saturating_add(n);
        let limit = self.budget();
        if self.used > limit {
            return Err(FormatError::OverBudget {
                path: self.ctx.path.to_path_buf(),
                entry: format!("{} @ byte {}", self.ctx.entry, self.op_pos),
                limit,
                knob: "pickle",
                env: super::PICKLE_BUDGET_ENV,
            });
        }
        Ok(())
    }
    /// Push a value built just now (charged).
    fn push_v(&mut self, v: Value) -> Result<(), FormatError> {
        let e = Entry::scalar(v);
        self.charge(e.bytes)?;
        self.push(e)
    }
    /// Push a container (or object) built just now from moved parts: only its new nodes
    /// (`fresh` bytes) are charged.
    fn push_fresh(&mut self, e: Entry, fresh: u64) -> Result<(), FormatError> {
        self.charge(fresh)?;
        self.push(e)
    }
    /// Pop one entry, refreshing any memo slots that alias it.
    fn pop(&mut self) -> Result<Entry, FormatError> {
        let e = self.stack.pop().ok_or_else(|| self.err("stack underflow"))?;
        if self.marks.last().is_some_and(|&m| m > self.stack.len()) {
            return Err(self.err("stack underflow past a MARK"));
        }
        self.close(&e)?;
        Ok(e)
    }
    fn top(&mut self) -> Result<&mut Entry, FormatError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let n = self.stack.len();
        Ok(&mut self.stack[n - 1])
    }
    /// Pop everything above the last MARK (in order) and the MARK itself.
    fn pop_mark(&mut self) -> Result<Vec<Entry>, FormatError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK to pop to"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        let items = self.stack.split_off(m);
        for e in &items {
            self.close(e)?;
        }
        Ok(items)
    }
    /// An entry leaves the stack: its memo slots, which are now closed, get a snapshot of it
    /// (one charged copy per slot).
    fn close(&mut self, e: &Entry) -> Result<(), FormatError> {
        for &k in &e.memo {
            self.charge(e.bytes)?;
            self.memo.insert(k, (e.v.clone(), e.depth, e.bytes));
            if let Some(n) = self.open.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.open.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Entry>, FormatError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.pop()?);
        }
        out.reverse();
        Ok(out)
    }

    fn container(v: Value, items: &[Entry]) -> Entry {
        let depth = items.iter().map(|e| e.depth).max().unwrap_or(0) + 1;
        let bytes = items.iter().fold(NODE_BYTES, |a, e| a.saturating_add(e.bytes));
        Entry::new(v, depth, bytes)
    }
    fn tuple(items: Vec<Entry>) -> Entry {
        let mut e = Self::container(Value::None, &items);
        e.v = Value::Tuple(items.into_iter().map(|e| e.v).collect());
        e
    }

    fn memo_put(&mut self, key: u32) -> Result<(), FormatError> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(self.err(format!("more than {MAX_MEMO} memo entries")));
        }
        let n = self.stack.len();
        if n == 0 || self.marks.last().is_some_and(|&m| m >= n) {
            return Err(self.err("memo put with an empty stack"));
        }
        let e = &self.stack[n - 1];
        let mutable = match &e.v {
            Value::Dict(_) | Value::List(_) => true,
            Value::Object { class, .. } => class != GLOBAL_CLASS && class != STORAGE_CLASS,
            _ => false,
        };
        if mutable {
            // Not copied now: the slot cannot be read while the container is open (a get
            // of it is a cycle), and `close` stores the finished container.
            let e = &mut self.stack[n - 1];
            e.memo.push(key);
            *self.open.entry(key).or_insert(0) += 1;
            self.memo.insert(key, (Value::None, 0, NODE_BYTES));
        } else {
            let bytes = e.bytes;
            self.charge(bytes)?;
            let e = &self.stack[n - 1];
            let snapshot = (e.v.clone(), e.depth, e.bytes);
            self.memo.insert(key, snapshot);
        }
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), FormatError> {
        if self.open.contains_key(&key) {
            return Err(self.err(format!(
                "memo slot {key} refers to a container still being built (cyclic container)"
            )));
        }
        let bytes = self
            .memo
            .get(&key)
            .map(|m| m.2)
            .ok_or_else(|| self.err(format!("memo slot {key} was never set")))?;
        // Charged before the copy is made.
        self.charge(bytes)?;
        let (v, depth, bytes) = self.memo.get(&key).cloned().ok_or_else(|| self.err("memo slot vanished"))?;
        self.push(Entry::new(v, depth, bytes))
    }

    /// Check a global against the allowlist; refuse before anything can call it.
    fn global(&mut self, module: &str, name: &str) -> Result<(), FormatError> {
        let full = format!("{module}.{name}");
        let allowed = match (module, name) {
            ("collections", "OrderedDict")
            | ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch", "Size")
            | ("torch", "UntypedStorage")
            | ("torch.storage", "UntypedStorage")
            | ("_codecs", "encode")
            | ("numpy.core.multiarray", "scalar")
            | ("numpy._core.multiarray", "scalar")
            | ("numpy", "dtype")
            | ("argparse", "Namespace") => true,
            ("torch", n) => {
                DType::from_storage_class(n).is_some() || DType::from_torch_dtype_name(n).is_some()
            }
            ("torch.jit._pickle", _) => self.ctx.torchscript,
            // A full-model pickle's `_non_persistent_buffers_set` (protocol 2 spells set so).
            ("__builtin__" | "builtins", "set") => true,
            // The modules of a full-model pickle: kept as inert objects, never constructed.
            _ if super::value::is_module_class(&full) => true,
            (m, _) => {
                self.ctx.torchscript && (m == "__torch__" || m.starts_with("__torch__."))
            }
        };
        if !allowed {
            return Err(FormatError::ForbiddenGlobal {
                path: self.ctx.path.to_path_buf(),
                entry: format!("{} @ byte {}", self.ctx.entry, self.op_pos),
                module: module.to_string(),
                name: name.to_string(),
            });
        }
        let v = Value::Object {
            class: GLOBAL_CLASS.into(),
            args: Box::new(Value::Str(full)),
            state: Box::new(Value::None),
        };
        let bytes = tree_bytes(&v, 0);
        self.push_fresh(Entry::new(v, 0, bytes), bytes)
    }

    fn global_name(v: &Value) -> Option<&str> {
        match v {
            Value::Object { class, args, .. } if class == GLOBAL_CLASS => args.as_str(),
            _ => None,
        }
    }

    fn run(&mut self) -> Result<Value, FormatError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8().map_err(|_| self.err("missing STOP"))?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the bytes must be there.
                    let n = self.len_u64()?;
                    if n > self.data.len() - self.pos {
                        return Err(self.err(format!("frame of {n} bytes runs past the end")));
                    }
                }
                b'.' => {
                    // STOP
                    if !self.marks.is_empty() {
                        return Err(self.err("STOP with an open MARK"));
                    }
                    // Not `pop`: the memo dies with the VM, so the result's memo slots need
                    // no final snapshot (a whole-tree copy of every checkpoint otherwise).
                    let e = self.stack.pop().ok_or_else(|| self.err("stack underflow"))?;
                    return Ok(e.v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.err(format!("MARKs nested deeper than {MAX_MARKS}")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let e = self.top()?;
                    if !matches!(e.v, Value::Int(_) | Value::Str(_) | Value::None | Value::Bool(_) | Value::Float(_)) {
                        return Err(self.err("DUP of a container is not supported"));
                    }
                    let bytes = e.bytes;
                    // Charged before the copy is made.
                    self.charge(bytes)?;
                    let e = self.top()?;
                    let c = Entry::new(e.v.clone(), e.depth, e.bytes);
                    self.push(c)?;
                }
                b'N' => self.push_v(Value::None)?,
                0x88 => self.push_v(Value::Bool(true))?,
                0x89 => self.push_v(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_v(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_v(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_v(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    if n > MAX_LONG_BYTES {
                        return Err(self.err(format!("integer of {n} bytes (limit {MAX_LONG_BYTES})")));
                    }
                    let b = self.take(n)?;
                    self.push_v(long_value(b))?
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| self.err("bad INT text"))?),
                    };
                    self.push_v(v)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_v(Value::Float(f64::from_be_bytes(a)))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.charge(NODE_BYTES + n as u64)?;
                    let s = self.utf8(b)?;
                    self.push(Entry::scalar(Value::Str(s)))?
                }
                b'U' | b'T' => {
                    // py2 str: bytes, decoded as latin-1 (what torch.load's encoding does).
                    let n = if op == b'U' { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    // Latin-1 → UTF-8 takes up to two bytes per character.
                    self.charge(NODE_BYTES + 2 * n as u64)?;
                    self.push(Entry::scalar(Value::Str(b.iter().map(|&c| c as char).collect())))?
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.charge(NODE_BYTES + n as u64)?;
                    self.push(Entry::scalar(Value::Bytes(b.to_vec())))?
                }
                b')' => self.push_fresh(Self::tuple(Vec::new()), NODE_BYTES)?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_fresh(Self::tuple(items), NODE_BYTES)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let items = self.pop_n(n)?;
                    self.push_fresh(Self::tuple(items), NODE_BYTES)?
                }
                // EMPTY_SET (protocol 4 sets, e.g. `_non_persistent_buffers_set`): a list.
                b']' | 0x8f => self.push_fresh(Entry::new(Value::List(Vec::new()), 1, NODE_BYTES), NODE_BYTES)?,
                0x90 => {
                    // ADDITEMS: like APPENDS, into the set's list.
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                // LIST, and FROZENSET: a list of the items above the MARK.
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let mut e = Self::container(Value::None, &items);
                    e.v = Value::List(items.into_iter().map(|e| e.v).collect());
                    self.push_fresh(e, NODE_BYTES)?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push_fresh(Entry::new(Value::Dict(Vec::new()), 1, NODE_BYTES), NODE_BYTES)?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_fresh(Entry::new(Value::Dict(Vec::new()), 1, NODE_BYTES), NODE_BYTES)?;
                    self.setitems(items)?
                }
                b's' => {
                    let kv = self.pop_n(2)?;
                    self.setitems(kv)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.setitems(items)?
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.global(&module, &name)?
                }
                0x93 => {
                    let kv = self.pop_n(2)?;
                    match (&kv[0].v, &kv[1].v) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?
                        }
                        _ => return Err(self.err("STACK_GLOBAL of non-strings")),
                    }
                }
                b'R' => {
                    let kv = self.pop_n(2)?;
                    let mut it = kv.into_iter();
                    // pop_n(2) returned two entries.
                    let (f, args) = match (it.next(), it.next()) {
                        (Some(f), Some(a)) => (f, a),
                        _ => return Err(self.err("stack underflow")),
                    };
                    let (r, fresh) = self.reduce(f, args)?;
                    self.push_fresh(r, fresh)?
                }
                0x81 => {
                    let kv = self.pop_n(2)?;
                    let mut it = kv.into_iter();
                    let (cls, args) = match (it.next(), it.next()) {
                        (Some(f), Some(a)) => (f, a),
                        _ => return Err(self.err("stack underflow")),
                    };
                    let (r, fresh) = self.newobj(cls, args)?;
                    self.push_fresh(r, fresh)?
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo_put(k)?
                }
                b'p' => {
                    let k: u32 = self.line()?.parse().map_err(|_| self.err("bad PUT index"))?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'g' => {
                    let k: u32 = self.line()?.parse().map_err(|_| self.err("bad GET index"))?;
                    self.memo_get(k)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let at = self.op_pos;
                    let v = (self.load)(&pid.v, at)?;
                    let bytes = tree_bytes(&v, 0);
                    self.push_fresh(Entry::new(v, 1, bytes), bytes)?
                }
                b'i' | b'o' => {
                    return Err(self.err(format!(
                        "opcode {} (INST/OBJ) is refused: it calls a class",
                        if op == b'i' { "INST" } else { "OBJ" }
                    )))
                }
                other => {
                    return Err(self.err(format!("opcode 0x{other:02x} is not on the allowlist")))
                }
            }
        }
    }

    fn append(&mut self, items: Vec<Entry>) -> Result<(), FormatError> {
        let top = self.top()?;
        let Value::List(list) = &mut top.v else {
            let kind = top.v.kind();
            return Err(self.err(format!("APPEND to a {kind}")));
        };
        for e in items {
            top.depth = top.depth.max(e.depth + 1);
            top.bytes = top.bytes.saturating_add(e.bytes);
            list.push(e.v);
        }
        if top.depth > MAX_NESTING {
            return Err(self.err(format!("containers nested deeper than {MAX_NESTING}")));
        }
        Ok(())
    }

    fn setitems(&mut self, items: Vec<Entry>) -> Result<(), FormatError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for SETITEMS"));
        }
        // Budget: the duplicate-key index copies every string/int key once.
        let mut fresh: u64 = items.iter().step_by(2).filter_map(|k| key_index_bytes(&k.v)).sum();
        let top = self.top()?;
        if top.keys.is_none()
            && let Value::Dict(d) = &top.v
        {
            fresh += d.iter().filter_map(|(k, _)| key_index_bytes(k)).sum::<u64>();
        }
        self.charge(fresh)?;
        let op_pos = self.op_pos;
        let ctx_path = self.ctx.path;
        let ctx_entry = self.ctx.entry;
        let top = self.top()?;
        let mk_err = |reason: String| FormatError::Pickle {
            path: ctx_path.to_path_buf(),
            entry: ctx_entry.to_string(),
            offset: op_pos,
            reason,
        };
        let Value::Dict(dict) = &mut top.v else {
            return Err(mk_err(format!("SETITEM on a {}", top.v.kind())));
        };
        let keys = top
            .keys
            .get_or_insert_with(|| dict.iter().enumerate().filter_map(|(i, (k, _))| key_repr(k).map(|r| (r, i))).collect());
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            top.depth = top.depth.max(k.depth + 1).max(v.depth + 1);
            top.bytes = top.bytes.saturating_add(k.bytes).saturating_add(v.bytes);
            match key_repr(&k.v) {
                Some(r) if keys.contains_key(&r) => {
                    // Python keeps the last value; two tensors under one name is a lie.
                    let slot = keys.get(&r).and_then(|&i| dict.get_mut(i));
                    if let Some((_, old)) = slot {
                        if matches!(old, Value::Tensor(_)) && matches!(v.v, Value::Tensor(_)) {
                            return Err(FormatError::DuplicateKey {
                                path: ctx_path.to_path_buf(),
                                entry: format!("{ctx_entry} @ byte {op_pos}"),
                                key: r[1..].to_string(),
                            });
                        }
                        *old = v.v;
                    }
                }
                Some(r) => {
                    keys.insert(r, dict.len());
                    dict.push((k.v, v.v));
                }
                None => dict.push((k.v, v.v)),
            }
        }
        if top.depth > MAX_NESTING {
            return Err(mk_err(format!("containers nested deeper than {MAX_NESTING}")));
        }
        Ok(())
    }

    fn build(&mut self, state: Entry) -> Result<(), FormatError> {
        let top = self.top()?;
        match &mut top.v {
            // OrderedDict state (`_metadata` of a state dict): version info, dropped.
            Value::Dict(_) => Ok(()),
            Value::Object { class, state: s, .. } if class != GLOBAL_CLASS && class != STORAGE_CLASS => {
                top.depth = top.depth.max(state.depth + 1);
                top.bytes = top.bytes.saturating_add(state.bytes);
                **s = state.v;
                if top.depth > MAX_NESTING {
                    return Err(self.err(format!("containers nested deeper than {MAX_NESTING}")));
                }
                Ok(())
            }
            other => {
                let kind = other.kind();
                Err(self.err(format!("BUILD on a {kind}")))
            }
        }
    }

    /// NEWOBJ: the new entry and the bytes it newly allocates (its parts are moved).
    fn newobj(&mut self, cls: Entry, args: Entry) -> Result<(Entry, u64), FormatError> {
        let name = Self::global_name(&cls.v)
            .ok_or_else(|| self.err("NEWOBJ of something that is not a class"))?
            .to_string();
        match name.as_str() {
            "collections.OrderedDict" => Ok((Entry::new(Value::Dict(Vec::new()), 1, NODE_BYTES), NODE_BYTES)),
            n if n == "argparse.Namespace" || n.starts_with("__torch__") || super::value::is_module_class(n) => {
                let fresh = 2 * NODE_BYTES + name.len() as u64;
                let mut e = Self::container(Value::None, std::slice::from_ref(&args));
                e.bytes = e.bytes.saturating_add(fresh);
                e.v = Value::Object {
                    class: name,
                    args: Box::new(args.v),
                    state: Box::new(Value::None),
                };
                Ok((e, fresh))
            }
            _ => Err(self.err(format!("NEWOBJ of {name} is not allowed"))),
        }
    }

    /// REDUCE of an allowlisted global: the result and the bytes it newly allocates (the
    /// parts it is made of are moved from the arguments).
    fn reduce(&mut self, f: Entry, args: Entry) -> Result<(Entry, u64), FormatError> {
        let name = Self::global_name(&f.v)
            .ok_or_else(|| self.err(format!("REDUCE calls a {}, not an allowlisted global", f.v.kind())))?
            .to_string();
        let (args_d, args_s) = (args.depth, args.bytes);
        let Value::Tuple(a) = args.v else {
            return Err(self.err(format!("REDUCE of {name} with non-tuple arguments")));
        };
        match name.as_str() {
            "collections.OrderedDict" => {
                if !a.is_empty() {
                    return Err(self.err("OrderedDict with constructor arguments"));
                }
                Ok((Entry::new(Value::Dict(Vec::new()), 1, NODE_BYTES), NODE_BYTES))
            }
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => {
                if a.len() < 4 {
                    return Err(self.err(format!("{name} with {} arguments", a.len())));
                }
                let t = self.rebuild(&a[0], &a[1], &a[2], &a[3], None)?;
                let b = NODE_BYTES + heap_bytes(&t);
                Ok((Entry::new(t, 0, b), b))
            }
            "torch._utils._rebuild_tensor_v3" => {
                if a.len() < 7 {
                    return Err(self.err(format!("{name} with {} arguments", a.len())));
                }
                let dtype = Self::global_name(&a[6])
                    .and_then(|g| g.strip_prefix("torch."))
                    .and_then(DType::from_torch_dtype_name)
                    .ok_or_else(|| self.bad_tensor("_rebuild_tensor_v3 without a known dtype"))?;
                let t = self.rebuild(&a[0], &a[1], &a[2], &a[3], Some(dtype))?;
                let b = NODE_BYTES + heap_bytes(&t);
                Ok((Entry::new(t, 0, b), b))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match a.into_iter().next() {
                    Some(t @ (Value::Tensor(_) | Value::None)) => {
                        let b = NODE_BYTES + heap_bytes(&t);
                        Ok((Entry::new(t, 0, b), 0))
                    }
                    _ => Err(self.err(format!("{name} of something that is not a tensor"))),
                }
            }
            "torch.Size" => match a.into_iter().next() {
                Some(Value::Tuple(t)) if t.iter().all(|x| matches!(x, Value::Int(_))) => {
                    let b = (t.len() as u64 + 1) * NODE_BYTES;
                    Ok((Entry::new(Value::Tuple(t), 1, b), 0))
                }
                _ => Err(self.err("torch.Size of something that is not a tuple of ints")),
            },
            "_codecs.encode" => match (a.first(), a.get(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc)))
                    if enc == "latin1" || enc == "latin-1" =>
                {
                    let fresh = NODE_BYTES + s.len() as u64;
                    self.charge(fresh)?;
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        let c = u32::from(c);
                        if c > 255 {
                            return Err(self.err("_codecs.encode: character outside latin-1"));
                        }
                        out.push(c as u8);
                    }
                    Ok((Entry::scalar(Value::Bytes(out)), 0))
                }
                _ => Err(self.err("_codecs.encode other than (str, 'latin1')")),
            },
            n if n.starts_with("torch.jit._pickle.") => {
                // restore_type_tag(value, type), build_intlist(list), …: the value, unchanged.
                match a.into_iter().next() {
                    Some(v) => {
                        let depth = args_d.saturating_sub(1);
                        Ok((Entry::new(v, depth, args_s), 0))
                    }
                    None => Ok((Entry::scalar(Value::None), NODE_BYTES)),
                }
            }
            "__builtin__.set" | "builtins.set" => {
                // set(iterable) as the list of its items (moved, not copied).
                let items = match a.into_iter().next() {
                    None => Vec::new(),
                    Some(Value::List(items) | Value::Tuple(items)) => items,
                    Some(other) => return Err(self.err(format!("set of a {}", other.kind()))),
                };
                Ok((Entry::new(Value::List(items), args_depth(args_d), args_s), 0))
            }
            // A module-path class called with arguments (an enum member such as timm's
            // `Format('NCHW')`): kept as an inert object with its arguments.
            n if n == "numpy.core.multiarray.scalar"
                || n == "numpy._core.multiarray.scalar"
                || n == "numpy.dtype"
                || n == "argparse.Namespace"
                || super::value::is_module_class(n) =>
            {
                let fresh = 3 * NODE_BYTES + name.len() as u64;
                Ok((
                    Entry::new(
                        Value::Object {
                            class: name,
                            args: Box::new(Value::Tuple(a)),
                            state: Box::new(Value::None),
                        },
                        args_depth(args_d),
                        args_s.saturating_add(fresh),
                    ),
                    fresh,
                ))
            }
            n if n.starts_with("__torch__") => {
                let fresh = 3 * NODE_BYTES + name.len() as u64;
                Ok((
                    Entry::new(
                        Value::Object {
                            class: name.clone(),
                            args: Box::new(Value::Tuple(a)),
                            state: Box::new(Value::None),
                        },
                        args_depth(args_d),
                        args_s.saturating_add(fresh),
                    ),
                    fresh,
                ))
            }
            _ => Err(self.err(format!("{name} cannot be called"))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride)`: a validated view.
    fn rebuild(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        untyped_as: Option<DType>,
    ) -> Result<Value, FormatError> {
        let Value::Object { class, args, .. } = storage else {
            return Err(self.bad_tensor(format!("storage argument is a {}", storage.kind())));
        };
        if class != STORAGE_CLASS {
            return Err(self.bad_tensor(format!("storage argument is a {class}")));
        }
        let base = match args.as_ref() {
            Value::Tensor(t) => t,
            _ if self.ctx.dry_run => return Ok(Value::None),
            _ => return Err(self.bad_tensor("storage without bytes")),
        };
        let ints = |v: &Value, what: &str| -> Result<Vec<usize>, FormatError> {
            let items = match v {
                Value::Tuple(t) | Value::List(t) => t,
                _ => return Err(self.bad_tensor(format!("{what} is a {}, not a tuple", v.kind()))),
            };
            items
                .iter()
                .map(|x| {
                    let i = int_of(x).ok_or_else(|| self.bad_tensor(format!("{what} holds a {}", x.kind())))?;
                    usize::try_from(i).map_err(|_| self.bad_tensor(format!("negative {what} {i}")))
                })
                .collect()
        };
        let shape = ints(size, "size")?;
        let strides = ints(stride, "stride")?;
        let off = int_of(offset).ok_or_else(|| self.bad_tensor("storage offset is not an int"))?;
        let off = usize::try_from(off).map_err(|_| self.bad_tensor(format!("negative storage offset {off}")))?;
        if shape.len() != strides.len() {
            return Err(self.bad_tensor(format!(
                "size has {} dims but stride has {}",
                shape.len(),
                strides.len()
            )));
        }
        let numel = checked_numel(&shape).ok_or_else(|| self.bad_tensor(format!("shape {shape:?} overflows")))?;
        if self.ctx.dry_run {
            return Ok(Value::None);
        }
        // Element type and the element range of the storage (or legacy view) this may address.
        let (dtype, base_off, limit) = match untyped_as {
            Some(d) => {
                if base.dtype != DType::U8 {
                    return Err(self.bad_tensor("_rebuild_tensor_v3 on a typed storage"));
                }
                let start = base.offset;
                if start % d.size() != 0 {
                    return Err(self.bad_tensor("untyped storage view not aligned to its dtype"));
                }
                (d, start / d.size(), base.numel() / d.size())
            }
            None => (base.dtype, base.offset, base.numel()),
        };
        if numel > 0 {
            let mut last = off;
            for (&s, &st) in shape.iter().zip(&strides) {
                last = (s - 1)
                    .checked_mul(st)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| self.bad_tensor("offset + strides overflow"))?;
            }
            if last >= limit {
                return Err(self.bad_tensor(format!(
                    "view (offset {off}, size {shape:?}, stride {strides:?}) reaches element {last} but its storage has {limit}"
                )));
            }
        }
        let abs = base_off
            .checked_add(off)
            .ok_or_else(|| self.bad_tensor("offset overflows"))?;
        let name = format!("{} @ byte {}", self.ctx.entry, self.op_pos);
        let t = TensorView::new(
            self.ctx.path,
            &name,
            dtype,
            shape,
            strides,
            abs,
            base.big_endian,
            base.storage.clone(),
        )?;
        Ok(Value::Tensor(t))
    }
}

fn args_depth(d: usize) -> usize {
    d.max(1)
}

/// LONG1/LONG4 payload (two's complement, little-endian) as an Int, or as hex text when it
/// does not fit in i64.
fn long_value(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(a));
    }
    let hex: String = b.iter().rev().map(|x| format!("{x:02x}")).collect();
    Value::BigInt(format!("0x{hex}"))
}

/// The persistent id a torch pickle uses for a storage:
/// `('storage', storage_type, key, location, numel[, view_metadata])`.
pub struct StorageRef {
    /// `None` for `torch.UntypedStorage` (numel counts bytes then).
    pub dtype: Option<DType>,
    /// The storage's key (`data/<key>` in a zip archive).
    pub key: String,
    /// Elements in the storage (bytes for an untyped storage).
    pub numel: usize,
    /// Legacy views: (view key, offset, size) in elements of the root storage.
    pub view: Option<(String, usize, usize)>,
}

/// Decode a storage persistent id, refusing anything else.
pub fn parse_storage_pid(path: &Path, entry: &str, offset: usize, pid: &Value) -> Result<StorageRef, FormatError> {
    let err = |reason: String| FormatError::Pickle {
        path: path.to_path_buf(),
        entry: entry.to_string(),
        offset,
        reason,
    };
    let Value::Tuple(t) = pid else {
        return Err(err(format!("persistent id is a {}, not a tuple", pid.kind())));
    };
    if t.first().and_then(Value::as_str) != Some("storage") {
        return Err(err("persistent id whose first item is not 'storage'".into()));
    }
    if t.len() != 5 && t.len() != 6 {
        return Err(err(format!("storage persistent id with {} items", t.len())));
    }
    let ty = match &t[1] {
        Value::Object { class, args, .. } if class == GLOBAL_CLASS => args.as_str().unwrap_or(""),
        other => return Err(err(format!("storage type is a {}", other.kind()))),
    };
    let dtype = match ty {
        "torch.UntypedStorage" | "torch.storage.UntypedStorage" => None,
        t => match t.strip_prefix("torch.").and_then(DType::from_storage_class) {
            Some(d) => Some(d),
            None => {
                return Err(FormatError::bad_tensor(
                    path,
                    format!("{entry} @ byte {offset}"),
                    format!("unsupported storage type {t}"),
                ))
            }
        },
    };
    let key = match &t[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(err(format!("storage key is a {}", other.kind()))),
    };
    let numel = int_of(&t[4])
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| err("storage size is not a non-negative int".into()))?;
    let view = match t.get(5) {
        None | Some(Value::None) => None,
        Some(Value::Tuple(v)) if v.len() == 3 => {
            let k = match &v[0] {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(err("view key is not a string".into())),
            };
            let o = int_of(&v[1]).and_then(|n| usize::try_from(n).ok());
            let s = int_of(&v[2]).and_then(|n| usize::try_from(n).ok());
            match (o, s) {
                (Some(o), Some(s)) => Some((k, o, s)),
                _ => return Err(err("view offset/size is not a non-negative int".into())),
            }
        }
        Some(other) => return Err(err(format!("view metadata is a {}", other.kind()))),
    };
    Ok(StorageRef { dtype, key, numel, view })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_node_counts_its_inline_size() {
        // docs/guarantees.md states 72 bytes on 64-bit targets; keep the two in step.
        const { assert!(NODE_BYTES <= 80) };
    }

    #[test]
    fn the_budget_counts_copies() {
        // 'abc…' (1000 bytes) memoised and fetched 10 times: 11 strings counted, not 1.
        let mut p = vec![0x80, 2, b'X'];
        p.extend(1000u32.to_le_bytes());
        p.extend([b'a'; 1000]);
        p.extend([b'q', 0, b'0', b'(']);
        for _ in 0..10 {
            p.extend([b'h', 0]);
        }
        p.extend([b'l', b'.']);
        let path = Path::new("t.pkl");
        let mut load = |_: &Value, _: usize| -> Result<Value, FormatError> { Ok(Value::None) };
        let run = |max: u64, load: &mut PersistentLoad<'_>| {
            let ctx = Ctx { path, entry: "t", torchscript: false, dry_run: false, strict_end: true, max_bytes: Some(max) };
            unpickle(&ctx, &p, 0, load).map(|_| ())
        };
        let one = NODE_BYTES + 1000;
        run(12 * one + 4 * NODE_BYTES, &mut load).expect("within 12 strings and the list");
        assert!(matches!(run(10 * one, &mut load), Err(FormatError::OverBudget { .. })));
    }
}
