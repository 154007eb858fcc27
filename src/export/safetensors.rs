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
    let mut f = Pending::begin(dest, force, tensors, metadata, true)?;
    f.write_tensors(tensors, produce, |_, _| {})?;
    f.commit()?;
    Ok(())
}

/// Bytes of a tensor handed to the file at a time; `inspect` sees each piece right after it
/// was copied, while it is still in cache.
pub const PIECE: usize = 256 << 10;

/// A safetensors file written under its temporary name and not yet published: its tensors
/// can be read back (verified) before [`Pending::commit`], and metadata values known only
/// then (the source hash computed beside the write, the verdict computed on the written
/// file) fill fixed-length placeholders in the header ([`Pending::fill`]). Dropped without
/// commit, the temporary file is removed.
pub struct Pending {
    f: AtomicFile,
    head: Vec<u8>,
    dest: std::path::PathBuf,
}

impl Pending {
    /// Create the temporary file and write the header for `tensors` with `metadata`.
    /// `direct`: stream the bytes past the page cache ([`AtomicFile::create_streaming`]),
    /// the cheapest way to write a file nothing reads back; without it they go through
    /// the page cache (writeback started as they go), where verifying the file reads them
    /// back from memory instead of from the disk.
    pub fn begin(
        dest: &Path,
        force: bool,
        tensors: &[OutTensor],
        metadata: &BTreeMap<String, String>,
        direct: bool,
    ) -> Result<Pending, WriteError> {
        let mut f = if direct { AtomicFile::create_streaming(dest, force)? } else { AtomicFile::create(dest, force)? };
        let head = header(tensors, metadata);
        f.write_all(&head).map_err(|e| WriteError::Io { path: dest.to_path_buf(), source: e })?;
        Ok(Pending { f, head, dest: dest.to_path_buf() })
    }

    fn io(&self, e: std::io::Error) -> WriteError {
        WriteError::Io { path: self.dest.clone(), source: e }
    }

    /// Write every tensor's bytes in order: `produce(i)` returns tensor i's little-endian
    /// bytes, and `inspect(i, piece)` sees every piece as it is written (a second look at the
    /// data at cache speed, e.g. counting non-finite values, instead of a pass over memory).
    pub fn write_tensors<E: From<WriteError>, B: AsRef<[u8]>>(
        &mut self,
        tensors: &[OutTensor],
        mut produce: impl FnMut(usize) -> Result<B, E>,
        mut inspect: impl FnMut(usize, &[u8]),
    ) -> Result<(), E> {
        for (i, t) in tensors.iter().enumerate() {
            let bytes = produce(i)?;
            debug_assert_eq!(bytes.as_ref().len(), t.nbytes(), "{}", t.name);
            for piece in bytes.as_ref().chunks(PIECE) {
                self.f.write_all(piece).map_err(|e| self.io(e))?;
                inspect(i, piece);
            }
        }
        Ok(())
    }

    /// Flush what was written: the temporary file is complete and readable at the path
    /// returned.
    pub fn flushed(&mut self) -> Result<&Path, WriteError> {
        self.f.flush().map_err(|e| self.io(e))?;
        Ok(self.f.tmp_path())
    }

    /// Replace the metadata value of `key`, written as `placeholder`, by `value` (JSON-string
    /// content, already escaped), right-padded with spaces to the placeholder's length. The
    /// place is found as `"key":"placeholder"`, which input data (file names, keys) cannot
    /// imitate: their quotes are escaped. A longer value is an error, as it would shift the
    /// data.
    pub fn fill(&mut self, key: &str, placeholder: &str, value: &str) -> Result<(), WriteError> {
        let needle = format!("{}:\"{placeholder}\"", serde_json::Value::String(key.to_string()));
        let Some(at) = self.head.windows(needle.len()).position(|w| w == needle.as_bytes()) else {
            return Err(self.io(std::io::Error::other(format!("metadata `{key}` holds no placeholder"))));
        };
        if value.len() > placeholder.len() {
            return Err(self.io(std::io::Error::other(format!(
                "metadata `{key}`: a value of {} bytes does not fit its {}-byte placeholder",
                value.len(),
                placeholder.len()
            ))));
        }
        let mut bytes = value.as_bytes().to_vec();
        bytes.resize(placeholder.len(), b' ');
        let start = at + needle.len() - placeholder.len() - 1;
        self.head[start..start + bytes.len()].copy_from_slice(&bytes);
        self.f.patch(start as u64, &bytes).map_err(|e| self.io(e))
    }

    /// fsync and rename into place.
    pub fn commit(self) -> Result<(), WriteError> {
        self.f.commit()
    }
}
