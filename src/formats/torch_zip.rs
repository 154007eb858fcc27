//! `torch.save` zip archives (PyTorch ≥ 1.6: `.pth`, `.pt`, `.bin`) and TorchScript
//! archives (`torch.jit.save` / `torch.jit.trace`, OpenAI CLIP's `.pt`).
//!
//! Mirrors `torch/serialization.py` (`_load` with `persistent_load` over
//! `PyTorchStreamReader`) and `torch/jit/_serialization.py` / `torch/csrc/jit/serialization/
//! import.cpp` for the archive layout: `<root>/data.pkl` holds the object tree, each storage
//! key `k` is the record `<root>/data/k`, `<root>/byteorder` says little or big. A
//! TorchScript archive adds `constants.pkl` (storages under `constants/`) and `code/`, which
//! is never read; `__torch__.*` module objects become inert [`Value::Object`]s, so their
//! tensors are found under dotted attribute paths (`transformer.resblocks.0.attn.in_proj_weight`).

use super::pickle::{self, Ctx, StorageRef};
use super::zip::{Archive, Method};
use super::{Checkpoint, DType, Format, FormatError, MappedFile, ReadLimits, Storage, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Read a torch zip or TorchScript archive from its memory map (default [`ReadLimits`]).
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, FormatError> {
    read_with(path, Source::Map(map), &ReadLimits::default())
}

/// Where the archive bytes live (the map, or a buffer — used by fuzz targets and tests).
pub enum Source {
    /// A memory-mapped file.
    Map(Arc<MappedFile>),
    /// Bytes held in memory.
    Owned(Arc<Vec<u8>>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Map(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// Read an archive held in memory (fuzzing, tests; default [`ReadLimits`]).
pub fn read_slice(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, FormatError> {
    read_with(path, Source::Owned(Arc::new(bytes)), &ReadLimits::default())
}

/// Read an archive from `src` under `limits`.
pub fn read_with(path: &Path, src: Source, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let bytes = src.bytes();
    let archive = Archive::parse(path, bytes)?.with_inflate_limit(limits.inflate_bytes);
    // The root folder is whatever precedes `/data.pkl` (torch uses the file stem, but any
    // name is accepted); it must be the same for every record.
    let pkl = archive
        .members
        .iter()
        .filter(|m| m.name.ends_with("/data.pkl") && m.name.matches('/').count() == 1)
        .map(|m| m.name.clone())
        .next()
        .ok_or_else(|| FormatError::missing(path, "data.pkl"))?;
    let root = &pkl[..pkl.len() - "data.pkl".len()];
    let torchscript = archive.find(&format!("{root}constants.pkl")).is_some()
        || archive.members.iter().any(|m| m.name.starts_with(&format!("{root}code/")));

    let mut metadata = BTreeMap::new();
    let big_endian = match archive.find(&format!("{root}byteorder")) {
        None => false,
        Some(m) => {
            let b = archive.read(m)?;
            match &b[..] {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(FormatError::corrupt(
                        path,
                        m.name.clone(),
                        format!("byteorder {:?} is neither little nor big", String::from_utf8_lossy(&other[..other.len().min(32)])),
                    ))
                }
            }
        }
    };
    metadata.insert("byteorder".into(), if big_endian { "big" } else { "little" }.into());
    for rec in [".format_version", "version", ".storage_alignment"] {
        if let Some(m) = archive.find(&format!("{root}{rec}"))
            && m.size <= 64
        {
            let b = archive.read(m)?;
            metadata.insert(rec.trim_start_matches('.').into(), String::from_utf8_lossy(&b).trim().to_string());
        }
    }
    let m = archive.find(&pkl).ok_or_else(|| FormatError::missing(path, pkl.clone()))?;
    let data = archive.read(m)?;
    let root_value = load_pickle(path, &archive, &src, root, "data/", &pkl, &data, torchscript, big_endian, limits)?;
    if torchscript {
        // The module classes name the activation (open_clip's `QuickGELU` vs `nn.GELU`).
        let mut classes = Vec::new();
        class_names(&root_value, &mut classes, 0);
        let named = if classes.iter().any(|c| c.ends_with(".QuickGELU")) {
            Some(("quick-gelu", "QuickGELU"))
        } else if classes.iter().any(|c| c.ends_with(".GELU")) {
            Some(("gelu", "GELU"))
        } else {
            None
        };
        if let Some((name, class)) = named {
            metadata.insert(super::META_ACTIVATION.into(), name.into());
            metadata.insert(super::META_ACTIVATION_FROM.into(), format!("the TorchScript archive's module classes ({class})"));
        }
        if let Some(m) = archive.find(&format!("{root}constants.pkl")) {
            let name = m.name.clone();
            let data = archive.read(m)?;
            let consts = load_pickle(path, &archive, &src, root, "constants/", &name, &data, true, big_endian, limits)?;
            let mut n = Vec::new();
            consts.collect_tensors("", &mut n);
            metadata.insert("torchscript.constants".into(), n.len().to_string());
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: if torchscript { Format::TorchScript } else { Format::TorchZip },
        root: root_value,
        metadata,
    })
}

#[allow(clippy::too_many_arguments)]
fn load_pickle(
    path: &Path,
    archive: &Archive<'_>,
    src: &Source,
    root: &str,
    dir: &str,
    entry: &str,
    data: &[u8],
    torchscript: bool,
    big_endian: bool,
    limits: &ReadLimits,
) -> Result<Value, FormatError> {
    // key → (dtype or None for untyped, storage)
    let mut storages: HashMap<String, (Option<DType>, Arc<Storage>)> = HashMap::new();
    let mut load = |pid: &Value, at: usize| -> Result<Value, FormatError> {
        let StorageRef { dtype, key, numel, view } = pickle::parse_storage_pid(path, entry, at, pid)?;
        if view.is_some() {
            return Err(FormatError::bad_tensor(path, format!("{entry} @ byte {at}"), "legacy storage view in a zip archive"));
        }
        let rec = format!("{root}{dir}{key}");
        let storage = match storages.get(&key) {
            Some((d, s)) => {
                if *d != dtype {
                    return Err(FormatError::bad_tensor(
                        path,
                        rec,
                        format!("storage read as two dtypes ({} and {})", dname(*d), dname(dtype)),
                    ));
                }
                s.clone()
            }
            None => {
                let m = archive.find(&rec).ok_or_else(|| FormatError::missing(path, rec.clone()))?;
                let s = match (m.method, src) {
                    (Method::Stored, Source::Map(map)) if limits.defer_crc => {
                        // Checked by whoever first uses the bytes (the import hashes them
                        // while writing them), so they are read once.
                        Storage::mapped_deferred(path, map.clone(), m.data_start as usize, m.size as usize, &m.name, m.crc)?
                    }
                    (Method::Stored, Source::Map(map)) => {
                        // Checked once, when the record is first used, at any size; the
                        // pages read for it are dropped from the resident set again.
                        archive.check_crc_stored(m, |start, len| release_pages(map, start, len))?;
                        Storage::mapped(path, map.clone(), m.data_start as usize, m.size as usize)?
                    }
                    _ => Storage::Owned(archive.read(m)?.into_owned()),
                };
                let s = Arc::new(s);
                storages.insert(key.clone(), (dtype, s.clone()));
                s
            }
        };
        let esize = dtype.map_or(1, DType::size);
        let need = numel
            .checked_mul(esize)
            .ok_or_else(|| FormatError::bad_tensor(path, rec.clone(), "storage size overflows"))?;
        if need > storage.len() {
            return Err(FormatError::bad_tensor(
                path,
                rec,
                format!("persistent id claims {numel} elements ({need} bytes) but the record has {} bytes", storage.len()),
            ));
        }
        let mut v = pickle::whole_storage_view(dtype.unwrap_or(DType::U8), storage);
        v.shape = vec![numel];
        v.big_endian = big_endian;
        Ok(pickle::storage_value(v, &key))
    };
    let ctx = Ctx {
        path,
        entry,
        torchscript,
        dry_run: false,
        strict_end: true,
        max_bytes: limits.pickle_bytes,
    };
    let (v, _) = pickle::unpickle(&ctx, data, 0, &mut load)?;
    Ok(v)
}

/// Drop `map[start..start+len]` from this process's resident set (see `Storage::release`).
pub(crate) fn release_pages(map: &MappedFile, start: usize, len: usize) {
    map.release_range(start, len);
}

fn dname(d: Option<DType>) -> &'static str {
    d.map_or("untyped", DType::name)
}

/// Class names of the inert objects in a TorchScript tree (depth-bounded like the VM).
fn class_names(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > pickle::MAX_NESTING {
        return;
    }
    match v {
        Value::Object { class, args, state } => {
            out.push(class.clone());
            class_names(args, out, depth + 1);
            class_names(state, out, depth + 1);
        }
        Value::Dict(items) => {
            for (_, x) in items {
                class_names(x, out, depth + 1);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for x in items {
                class_names(x, out, depth + 1);
            }
        }
        _ => {}
    }
}
