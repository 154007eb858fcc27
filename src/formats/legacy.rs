//! Pre-1.6 legacy `torch.save` streams (non-zip), and raw pickles with no container.
//!
//! Mirrors `torch/serialization.py` `_legacy_save` / `_legacy_load`: five consecutive
//! items — a pickle of the magic number `0x1950a86a20f9469cfc6c`, a pickle of the protocol
//! version (1001), a pickle of `sys_info` (`little_endian`, `type_sizes`), the object
//! pickle (storages as persistent ids `('storage', type, root_key, location, numel,
//! view_metadata)`), a pickle of the storage key list — then for each key in that order a
//! little-endian u64 element count followed by the raw elements. Views
//! (`view_metadata = (view_key, offset, size)`) must lie inside their root storage.
//!
//! The object pickle is run twice: once dry, to learn each storage's element type (the raw
//! records cannot be walked without it), then for real over the mapped records.

use super::pickle::{self, Ctx, StorageRef};
use super::{Checkpoint, DType, Format, FormatError, MappedFile, ReadLimits, Storage, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The legacy magic number, as the pickle VM renders a LONG1 too big for i64.
pub const MAGIC_HEX: &str = "0x1950a86a20f9469cfc6c";
/// The protocol version `_legacy_save` writes.
pub const PROTOCOL: i64 = 1001;
/// The bytes a legacy file starts with: PROTO 2, LONG1 of 10 bytes.
pub const PREFIX: &[u8] = b"\x80\x02\x8a\x0a";
/// Most storages a legacy file may list.
pub const MAX_STORAGES: usize = 1 << 20;

/// True when the bytes start like a legacy stream (PROTO 2 + LONG1 of 10 bytes).
pub fn looks_like_legacy(head: &[u8]) -> bool {
    head.starts_with(PREFIX)
}

/// True when the bytes start like any pickle (PROTO opcode with protocol 2..=5, or `}`/`(`/`]`
/// protocol-0/1 openings are not accepted: they are never checkpoints).
pub fn looks_like_pickle(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1])
}

fn noload(path: &Path, entry: &str) -> impl FnMut(&Value, usize) -> Result<Value, FormatError> {
    let path = path.to_path_buf();
    let entry = entry.to_string();
    move |_pid: &Value, at: usize| {
        Err(FormatError::Pickle {
            path: path.clone(),
            entry: entry.clone(),
            offset: at,
            reason: "persistent id where none is allowed".into(),
        })
    }
}

fn ctx<'a>(path: &'a Path, entry: &'a str, dry_run: bool, limits: &ReadLimits) -> Ctx<'a> {
    Ctx {
        path,
        entry,
        torchscript: false,
        dry_run,
        strict_end: false,
        max_bytes: limits.pickle_bytes,
    }
}

/// Read a raw pickle (no container): only plain data and no storages can appear.
pub fn read_raw_pickle(path: &Path, bytes: &[u8]) -> Result<Checkpoint, FormatError> {
    read_raw_pickle_with(path, bytes, &ReadLimits::default())
}

/// [`read_raw_pickle`] under `limits`.
pub fn read_raw_pickle_with(path: &Path, bytes: &[u8], limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let c = Ctx {
        strict_end: true,
        ..ctx(path, "pickle", false, limits)
    };
    let (root, _) = pickle::unpickle(&c, bytes, 0, &mut noload(path, "pickle"))?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::RawPickle,
        root,
        metadata: BTreeMap::new(),
    })
}

/// Read a legacy stream from its memory map (default [`ReadLimits`]).
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, FormatError> {
    read_with_limits(path, map, &ReadLimits::default())
}

/// [`read`] under `limits`.
pub fn read_with_limits(path: &Path, map: Arc<MappedFile>, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    read_with(path, &map[..], limits, |start, len| {
        Storage::mapped(path, map.clone(), start, len)
    })
}

/// Read a legacy stream held in memory (fuzzing, tests; default [`ReadLimits`]).
pub fn read_slice(path: &Path, bytes: &[u8]) -> Result<Checkpoint, FormatError> {
    read_slice_with(path, bytes, &ReadLimits::default())
}

/// [`read_slice`] under `limits`.
pub fn read_slice_with(path: &Path, bytes: &[u8], limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    read_with(path, bytes, limits, |start, len| Ok(Storage::Owned(bytes[start..start + len].to_vec())))
}

fn read_with(
    path: &Path,
    bytes: &[u8],
    limits: &ReadLimits,
    mut make: impl FnMut(usize, usize) -> Result<Storage, FormatError>,
) -> Result<Checkpoint, FormatError> {
    let (magic, pos) = pickle::unpickle(&ctx(path, "magic number", false, limits), bytes, 0, &mut noload(path, "magic"))?;
    if !matches!(&magic, Value::BigInt(h) if h == MAGIC_HEX) {
        return Err(FormatError::corrupt(path, "magic number", "not the legacy torch.save magic number"));
    }
    let (proto, pos) = pickle::unpickle(&ctx(path, "protocol", false, limits), bytes, pos, &mut noload(path, "protocol"))?;
    if !matches!(proto, Value::Int(PROTOCOL)) {
        return Err(FormatError::unsupported(path, format!("legacy protocol {proto:?} (expected {PROTOCOL})")));
    }
    let (sys_info, pos) = pickle::unpickle(&ctx(path, "sys_info", false, limits), bytes, pos, &mut noload(path, "sys_info"))?;
    let big_endian = matches!(sys_info.get("little_endian"), Some(Value::Bool(false)));
    let obj_start = pos;

    // Pass 1 (dry): learn each root storage's dtype and declared size.
    let mut types: HashMap<String, (DType, usize)> = HashMap::new();
    let entry = "object pickle";
    let mut learn = |pid: &Value, at: usize| -> Result<Value, FormatError> {
        let r = pickle::parse_storage_pid(path, entry, at, pid)?;
        let dtype = r.dtype.ok_or_else(|| {
            FormatError::bad_tensor(path, format!("{entry} @ byte {at}"), "untyped storage in a legacy file")
        })?;
        match types.get(&r.key) {
            Some((d, _)) if *d != dtype => {
                return Err(FormatError::bad_tensor(
                    path,
                    format!("storage {}", r.key),
                    format!("storage read as two dtypes ({} and {})", d.name(), dtype.name()),
                ))
            }
            _ => {
                types.insert(r.key.clone(), (dtype, r.numel));
            }
        }
        if types.len() > MAX_STORAGES {
            return Err(FormatError::corrupt(path, entry, format!("more than {MAX_STORAGES} storages")));
        }
        Ok(Value::Object {
            class: pickle::STORAGE_CLASS.into(),
            args: Box::new(Value::None),
            state: Box::new(Value::Str(r.key)),
        })
    };
    let (_, after_obj) = pickle::unpickle(&ctx(path, entry, true, limits), bytes, obj_start, &mut learn)?;

    let (keys, mut pos) = pickle::unpickle(&ctx(path, "storage keys", false, limits), bytes, after_obj, &mut noload(path, "storage keys"))?;
    let Value::List(keys) = keys else {
        return Err(FormatError::corrupt(path, "storage keys", "not a list"));
    };
    // Raw records: u64 element count, then the elements.
    let mut roots: HashMap<String, (DType, Arc<Storage>)> = HashMap::new();
    for k in keys {
        let Value::Str(k) = k else {
            return Err(FormatError::corrupt(path, "storage keys", "a key is not a string"));
        };
        let entry = format!("storage {k}");
        let (dtype, _) = *types
            .get(&k)
            .ok_or_else(|| FormatError::corrupt(path, entry.clone(), "listed but never used by the object pickle"))?;
        let head = bytes
            .get(pos..pos.saturating_add(8))
            .ok_or_else(|| FormatError::truncated(path, entry.clone(), 8, bytes.len().saturating_sub(pos) as u64))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(head);
        let numel = if big_endian { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) };
        pos += 8;
        let left = (bytes.len() - pos) as u64;
        let nbytes = numel
            .checked_mul(dtype.size() as u64)
            .filter(|&n| n <= left)
            .ok_or_else(|| FormatError::truncated(path, entry.clone(), numel.saturating_mul(dtype.size() as u64), left))?;
        let nbytes = nbytes as usize;
        let s = Arc::new(make(pos, nbytes)?);
        pos += nbytes;
        if roots.insert(k.clone(), (dtype, s)).is_some() {
            return Err(FormatError::corrupt(path, entry, "storage listed twice"));
        }
    }

    // Pass 2: the real object tree over the records.
    let mut load = |pid: &Value, at: usize| -> Result<Value, FormatError> {
        let StorageRef { dtype, key, numel, view } = pickle::parse_storage_pid(path, entry, at, pid)?;
        let (rd, s) = roots
            .get(&key)
            .ok_or_else(|| FormatError::missing(path, format!("storage {key}")))?;
        let dtype = dtype.unwrap_or(*rd);
        let root_numel = s.len() / dtype.size();
        if numel > root_numel {
            return Err(FormatError::bad_tensor(
                path,
                format!("storage {key}"),
                format!("persistent id claims {numel} elements but the record has {root_numel}"),
            ));
        }
        let mut v = pickle::whole_storage_view(dtype, s.clone());
        v.big_endian = big_endian;
        if let Some((vk, off, size)) = view {
            let end = off.checked_add(size).filter(|&e| e <= root_numel).ok_or_else(|| {
                FormatError::bad_tensor(
                    path,
                    format!("view {vk} of storage {key}"),
                    format!("view {off}..{off}+{size} lies outside its root storage of {root_numel} elements"),
                )
            })?;
            let _ = end;
            v.offset = off;
            v.shape = vec![size];
        }
        Ok(pickle::storage_value(v, &key))
    };
    let (root, _) = pickle::unpickle(&ctx(path, entry, false, limits), bytes, obj_start, &mut load)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("byteorder".into(), if big_endian { "big" } else { "little" }.into());
    metadata.insert("legacy_protocol".into(), PROTOCOL.to_string());
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::TorchLegacy,
        root,
        metadata,
    })
}
