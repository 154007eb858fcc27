//! `.safetensors` reader: validated exactly as the reference `safetensors` crate validates
//! (header length bound, JSON, offsets contiguous and inside the file), tensors as views over
//! the memory-mapped file.
//!
//! Mirrors `safetensors/src/tensor.rs` `SafeTensors::deserialize` + `safe_open`.

use super::{Checkpoint, DType, Format, FormatError, MappedFile, Storage, TensorView, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Header length above which a file is refused (the reference crate's `MAX_HEADER_SIZE`).
pub const MAX_HEADER: u64 = 100_000_000;

/// A safetensors file starts with a u64 header length followed by `{`.
pub fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9 && head[8] == b'{'
}

/// [`looks_like_safetensors`] with a header length that fits in the file's `file_len`
/// bytes: sniffed before pickles, so a safetensors file whose length byte is 0x80 (a pickle's
/// PROTO) is not read as one; a header length past the file is still taken for safetensors
/// (and refused as truncated) after the pickle checks.
pub fn fits_safetensors(head: &[u8], file_len: usize) -> bool {
    looks_like_safetensors(head)
        && u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]])
            <= file_len.saturating_sub(8) as u64
}

/// Open and read a `.safetensors` file (a regular file only: see [`super::open_regular`]).
pub fn read(path: &Path) -> Result<Checkpoint, FormatError> {
    let file = super::open_regular(path)?;
    let map = MappedFile::of(&file).map_err(|e| FormatError::io(path, e))?;
    read_mapped(path, Arc::new(map))
}

/// Read a `.safetensors` file from its memory map.
pub fn read_mapped(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, FormatError> {
    read_with(path, &map[..], |start, len| Storage::mapped(path, map.clone(), start, len))
}

/// Read a safetensors file held in memory (fuzzing, tests).
pub fn read_slice(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, FormatError> {
    read_with(path, &bytes, |start, len| Ok(Storage::Owned(bytes[start..start + len].to_vec())))
}

fn read_with(
    path: &Path,
    bytes: &[u8],
    mut make: impl FnMut(usize, usize) -> Result<Storage, FormatError>,
) -> Result<Checkpoint, FormatError> {
    if bytes.len() >= 8 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(a);
        if n > MAX_HEADER {
            return Err(FormatError::TooLarge {
                path: path.to_path_buf(),
                entry: "safetensors header".into(),
                claimed: n,
                limit: MAX_HEADER,
            });
        }
        if n > bytes.len() as u64 - 8 {
            return Err(FormatError::truncated(path, "safetensors header", n, bytes.len() as u64 - 8));
        }
    }
    // Full validation first (offsets contiguous, inside the file, sizes match dtype·shape).
    safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| FormatError::corrupt(path, "safetensors header", e.to_string()))?;
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| FormatError::corrupt(path, "safetensors header", e.to_string()))?;
    let data_start = 8 + n;
    let mut items = Vec::new();
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> = meta.tensors().into_iter().collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets.0);
    for (name, info) in tensors {
        let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
            FormatError::bad_tensor(path, name.clone(), format!("unsupported dtype {:?}", info.dtype))
        })?;
        let (a, b) = info.data_offsets;
        let storage = Arc::new(make(data_start + a, b - a)?);
        let t = TensorView::contiguous(path, &name, dtype, info.shape.clone(), storage)?;
        items.push((Value::Str(name.clone()), Value::Tensor(t)));
    }
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::Safetensors,
        root: Value::Dict(items),
        metadata,
    })
}
