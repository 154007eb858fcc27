//! Streaming safetensors writer: the header (names, dtypes, shapes, offsets, `__metadata__`)
//! is computed from the plan first, then each tensor's bytes are produced and written one at
//! a time, so the whole model is never held in memory. Same format as
//! `safetensors.torch.save_file` (huggingface/safetensors `safetensors/src/tensor.rs`):
//! 8-byte little-endian header length, JSON header padded with spaces to a multiple of 8,
//! then the data in header order. Tensors are written in upstream state-dict order.

use super::atomic::{AtomicFile, WriteError};
use crate::formats::DType;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One tensor of an artifact: name, shape, dtype.
#[derive(Debug, Clone)]
pub struct OutTensor {
    /// Target key.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Element type as written.
    pub dtype: DType,
}

impl OutTensor {
    /// Bytes of the tensor's data (elements × element size).
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// The safetensors dtype label.
pub fn dtype_label(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
    }
}

/// The header bytes (length prefix included) for `tensors` in order, with `metadata`.
pub fn header(tensors: &[OutTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    // serde_json's map is ordered by key; keep the tensors in upstream order by writing the
    // object by hand.
    let mut json = String::from("{");
    json.push_str("\"__metadata__\":");
    json.push_str(&serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into()));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.nbytes();
        json.push(',');
        json.push_str(&serde_json::Value::String(t.name.clone()).to_string());
        json.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            dtype_label(t.dtype),
            serde_json::Value::from(t.shape.clone())
        ));
        offset = end;
    }
    json.push('}');
    while (json.len() + 8) % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// Write `tensors` to `dest` atomically; `produce(i)` returns tensor i's little-endian bytes
/// (exactly `tensors[i].nbytes()` of them) and is called once per tensor, in order.
pub fn write<E: From<WriteError>, B: AsRef<[u8]>>(
    dest: &Path,
    force: bool,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
    produce: impl FnMut(usize) -> Result<B, E>,
) -> Result<(), E> {
    write_late(dest, force, tensors, metadata, Vec::new(), produce, |_, _| {})
}

/// A metadata value known only after the tensors are written (the source hash computed
/// beside the write, the verify verdict computed on the written file): the header holds
/// `placeholder`, which `value(tmp)` replaces in place before the file is committed. `tmp` is
/// the complete, flushed file under its temporary name. The value is right-padded with spaces
/// to the placeholder's length (a JSON string value padded inside its quotes); a longer one
/// is an error, as it would shift the data. A value that fails aborts the write.
pub struct LateValue<'a> {
    /// The text the header holds until the value is known.
    pub placeholder: String,
    /// Computes the value from the complete temporary file.
    pub value: LateFn<'a>,
}

/// Computes a [`LateValue`] from the written file's temporary path.
pub type LateFn<'a> = Box<dyn FnOnce(&Path) -> std::io::Result<String> + 'a>;

/// Bytes of a tensor handed to the file at a time; `inspect` sees each piece right after it
/// was copied, while it is still in cache.
pub const PIECE: usize = 256 << 10;

/// [`write`] with [`LateValue`]s, and `inspect(i, piece)` called on every piece of tensor
/// i's bytes as it is written (a second look at the data at cache speed, e.g. counting
/// non-finite values, instead of a separate pass over memory).
pub fn write_late<E: From<WriteError>, B: AsRef<[u8]>>(
    dest: &Path,
    force: bool,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
    late: Vec<LateValue>,
    mut produce: impl FnMut(usize) -> Result<B, E>,
    mut inspect: impl FnMut(usize, &[u8]),
) -> Result<(), E> {
    let mut f = AtomicFile::create_streaming(dest, force)?;
    let io = |e| WriteError::Io { path: dest.to_path_buf(), source: e };
    let head = header(tensors, metadata);
    f.write_all(&head).map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = produce(i)?;
        debug_assert_eq!(bytes.as_ref().len(), t.nbytes(), "{}", t.name);
        for piece in bytes.as_ref().chunks(PIECE) {
            f.write_all(piece).map_err(io)?;
            inspect(i, piece);
        }
    }
    for l in late {
        f.flush().map_err(io)?;
        let mut value = (l.value)(f.tmp_path()).map_err(io)?.into_bytes();
        let at = head.windows(l.placeholder.len()).position(|w| w == l.placeholder.as_bytes());
        let Some(at) = at else { continue };
        if value.len() > l.placeholder.len() {
            return Err(io(std::io::Error::other(format!(
                "a late metadata value of {} bytes does not fit its {}-byte placeholder",
                value.len(),
                l.placeholder.len()
            )))
            .into());
        }
        value.resize(l.placeholder.len(), b' ');
        f.patch(at as u64, &value).map_err(io)?;
    }
    f.commit()?;
    Ok(())
}
