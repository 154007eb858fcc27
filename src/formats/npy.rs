//! numpy `.npy` arrays and `.npz` archives (Google AugReg / big_vision checkpoints).
//!
//! Mirrors `numpy/lib/format.py` (`read_array`, `_read_array_header`): the magic
//! `\x93NUMPY`, a version byte pair, a u16 (v1) or u32 (v2/v3) header length, then a Python
//! dict literal with `descr`, `fortran_order` and `shape`, then the raw elements. Only the
//! literal forms numpy itself writes are parsed (never evaluated). Object arrays (`|O`) are
//! refused: they hold pickles. `.npz` (`numpy/lib/npyio.py` `NpzFile`) is a zip of `.npy`
//! members, stored or deflated.

use super::zip::{Archive, Method};
use super::{Checkpoint, DType, Format, FormatError, MappedFile, ReadLimits, Storage, TensorView, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Longest `.npy` header accepted (numpy's own reader refuses over 10 000 by default).
pub const MAX_HEADER: usize = 1 << 16;
/// Most dimensions an array may have (numpy's `NPY_MAXDIMS` is 64).
pub const MAX_DIMS: usize = 64;

/// The first six bytes of every `.npy` file.
pub const MAGIC: &[u8] = b"\x93NUMPY";

/// Whether `head` starts with the `.npy` magic.
pub fn looks_like_npy(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// A parsed `.npy` header.
#[derive(Debug)]
pub struct Header {
    /// Element type (`descr`).
    pub dtype: DType,
    /// Elements are stored big-endian (`descr` starts with `>`).
    pub big_endian: bool,
    /// Column-major element order (`fortran_order`).
    pub fortran: bool,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Offset of the first element from the start of the `.npy` bytes.
    pub data_start: usize,
}

/// Parse the header of a `.npy` held in `b`.
pub fn parse_header(path: &Path, entry: &str, b: &[u8]) -> Result<Header, FormatError> {
    let corrupt = |r: String| FormatError::corrupt(path, entry.to_string(), r);
    if !b.starts_with(MAGIC) || b.len() < 10 {
        return Err(corrupt("not a .npy array (bad magic)".into()));
    }
    let (hlen, hstart) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            let s = b.get(8..12).ok_or_else(|| corrupt("truncated header".into()))?;
            (u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize, 12)
        }
        v => return Err(FormatError::unsupported(path, format!("{entry}: .npy version {v}"))),
    };
    if hlen > MAX_HEADER {
        return Err(FormatError::TooLarge {
            path: path.to_path_buf(),
            entry: entry.to_string(),
            claimed: hlen as u64,
            limit: MAX_HEADER as u64,
        });
    }
    let end = hstart + hlen;
    let text = b
        .get(hstart..end)
        .ok_or_else(|| FormatError::truncated(path, entry.to_string(), hlen as u64, (b.len() - hstart.min(b.len())) as u64))?;
    let text = std::str::from_utf8(text).map_err(|_| corrupt("header is not text".into()))?;
    let descr = dict_value(text, "descr").ok_or_else(|| corrupt("header without 'descr'".into()))?;
    let fortran = dict_value(text, "fortran_order").ok_or_else(|| corrupt("header without 'fortran_order'".into()))?;
    let shape = dict_value(text, "shape").ok_or_else(|| corrupt("header without 'shape'".into()))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.strip_suffix('\''))
        .ok_or_else(|| FormatError::unsupported(path, format!("{entry}: structured dtype {descr}")))?;
    if descr.contains('O') {
        return Err(FormatError::ObjectArray {
            path: path.to_path_buf(),
            entry: entry.to_string(),
        });
    }
    let mut chars = descr.chars();
    let order = chars.next().map(String::from).unwrap_or_default();
    let code = chars.as_str();
    let order = order.as_str();
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(FormatError::unsupported(path, format!("{entry}: dtype {descr}"))),
    };
    let dtype = match code {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return Err(FormatError::unsupported(path, format!("{entry}: dtype {descr}"))),
    };
    let fortran = match fortran {
        "False" => false,
        "True" => true,
        other => return Err(corrupt(format!("fortran_order {other}"))),
    };
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| corrupt(format!("shape {shape}")))?;
    let mut dims = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let part = part.strip_suffix('L').unwrap_or(part);
        let d: usize = part.parse().map_err(|_| corrupt(format!("shape {shape}")))?;
        dims.push(d);
        if dims.len() > MAX_DIMS {
            return Err(corrupt(format!("more than {MAX_DIMS} dimensions")));
        }
    }
    Ok(Header {
        dtype,
        big_endian,
        fortran,
        shape: dims,
        data_start: end,
    })
}

/// The text of `'key': VALUE` in a numpy header dict (VALUE up to the next top-level comma).
fn dict_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let pat = format!("'{key}':");
    let i = text.find(&pat)? + pat.len();
    let rest = text[i..].trim_start();
    let mut depth = 0i32;
    for (j, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..j].trim()),
            _ => {}
        }
    }
    None
}

/// A tensor over a `.npy`'s bytes held in `storage` (the whole `.npy`, header included).
fn tensor(path: &Path, entry: &str, storage: Arc<Storage>) -> Result<TensorView, FormatError> {
    let h = parse_header(path, entry, storage.bytes())?;
    let numel = super::tensor::checked_numel(&h.shape)
        .ok_or_else(|| FormatError::bad_tensor(path, entry, format!("shape {:?} overflows", h.shape)))?;
    let need = numel
        .checked_mul(h.dtype.size())
        .ok_or_else(|| FormatError::bad_tensor(path, entry, "byte size overflows"))?;
    let have = storage.len() - h.data_start;
    if need > have {
        return Err(FormatError::truncated(path, entry.to_string(), need as u64, have as u64));
    }
    if h.data_start % h.dtype.size() != 0 {
        return Err(FormatError::corrupt(path, entry.to_string(), "data not aligned to its element size"));
    }
    let mut strides = super::tensor::contiguous_strides(&h.shape);
    if h.fortran {
        // Column-major: first dimension fastest.
        let mut acc = 1usize;
        for (d, s) in h.shape.iter().zip(strides.iter_mut()) {
            *s = acc;
            acc = acc.saturating_mul(*d);
        }
    }
    TensorView::new(path, entry, h.dtype, h.shape, strides, h.data_start / h.dtype.size(), h.big_endian, storage)
}

/// Read a `.npy` file from its map.
pub fn read_npy(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, FormatError> {
    let len = map.len();
    let storage = Arc::new(Storage::mapped(path, map, 0, len)?);
    npy_checkpoint(path, storage)
}

/// Read a `.npy` held in memory (fuzzing, tests).
pub fn read_npy_slice(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, FormatError> {
    npy_checkpoint(path, Arc::new(Storage::Owned(bytes)))
}

fn npy_checkpoint(path: &Path, storage: Arc<Storage>) -> Result<Checkpoint, FormatError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "array".into());
    let t = tensor(path, &name, storage)?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::Npy,
        root: Value::Dict(vec![(Value::Str(name), Value::Tensor(t))]),
        metadata: BTreeMap::new(),
    })
}

/// Read an `.npz` archive: stored members mapped (CRC-checked), deflated members inflated
/// under the archive's inflate budget (default [`ReadLimits`]).
pub fn read_npz(path: &Path, map: Option<Arc<MappedFile>>, bytes: &[u8]) -> Result<Checkpoint, FormatError> {
    read_npz_with(path, map, bytes, &ReadLimits::default())
}

/// [`read_npz`] under `limits`.
pub fn read_npz_with(
    path: &Path,
    map: Option<Arc<MappedFile>>,
    bytes: &[u8],
    limits: &ReadLimits,
) -> Result<Checkpoint, FormatError> {
    let archive = Archive::parse(path, bytes)?.with_inflate_limit(limits.inflate_bytes);
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in &archive.members {
        let Some(name) = m.name.strip_suffix(".npy") else {
            continue;
        };
        let storage = match (m.method, &map) {
            (Method::Stored, Some(map)) => {
                archive.check_crc_stored(m, |start, len| super::torch_zip::release_pages(map, start, len))?;
                Storage::mapped(path, map.clone(), m.data_start as usize, m.size as usize)?
            }
            _ => Storage::Owned(archive.read(m)?.into_owned()),
        };
        let t = tensor(path, &m.name, Arc::new(storage))?;
        if !seen.insert(name.to_string()) {
            return Err(FormatError::DuplicateKey {
                path: path.to_path_buf(),
                entry: m.name.clone(),
                key: name.to_string(),
            });
        }
        items.push((Value::Str(name.to_string()), Value::Tensor(t)));
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::Npz,
        root: Value::Dict(items),
        metadata: BTreeMap::new(),
    })
}
