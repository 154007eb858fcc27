//! torch.save-compatible `.pth` writer (the zip format of PyTorch ≥ 1.6,
//! `torch/serialization.py` `_save` and `caffe2/serialize/inline_container.cc`):
//! `archive/data.pkl` (a protocol-2 pickle of `{"state_dict": OrderedDict(...), "meta": {...}}`,
//! each tensor `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
//! OrderedDict())` over a persistent id `('storage', torch.FloatStorage, key, 'cpu', numel)`),
//! `archive/byteorder` = `little`, one stored (uncompressed) `archive/data/N` record per
//! tensor aligned to 64 bytes like torch's writer, and `archive/version` = `3`. Every entry
//! carries a fixed timestamp so the same inputs give byte-identical files. Streaming: the
//! pickle needs only names and shapes, then each tensor's bytes are produced and written.

use super::atomic::{AtomicFile, WriteError};
use super::safetensors::OutTensor;
use crate::formats::DType;
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// Minimal protocol-2 pickle emitter for the object shapes torch.save writes.
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: u8) {
        self.0.push(b);
    }
    fn str(&mut self, s: &str) {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: u64) {
        if v < 256 {
            self.op(b'K');
            self.op(v as u8);
        } else if v < 65536 {
            self.op(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.op(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, 8 bytes plus a sign byte.
            self.op(0x8a);
            self.op(9);
            self.0.extend_from_slice(&v.to_le_bytes());
            self.op(0);
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.op(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.op(b'\n');
    }
    fn tuple_of_ints(&mut self, v: &[usize]) {
        self.op(b'(');
        for &x in v {
            self.int(x as u64);
        }
        self.op(b't');
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

fn storage_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::F64 => "DoubleStorage",
        DType::I32 => "IntStorage",
        _ => "FloatStorage",
    }
}

/// The `data.pkl` bytes for `{root_key: OrderedDict(tensors), "meta": meta}`.
pub fn data_pkl(root_key: &str, tensors: &[OutTensor], meta: &[(String, String)]) -> Vec<u8> {
    let mut p = Pickle(vec![0x80, 2]);
    p.op(b'}');
    p.op(b'(');
    p.str(root_key);
    p.empty_ordered_dict();
    p.op(b'(');
    for (i, t) in tensors.iter().enumerate() {
        p.str(&t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        // Persistent id tuple → BINPERSID.
        p.op(b'(');
        p.str("storage");
        p.global("torch", storage_name(t.dtype));
        p.str(&i.to_string());
        p.str("cpu");
        p.int(t.shape.iter().product::<usize>() as u64);
        p.op(b't');
        p.op(b'Q');
        p.int(0);
        p.tuple_of_ints(&t.shape);
        p.tuple_of_ints(&crate::formats::tensor::contiguous_strides(&t.shape));
        p.op(0x89); // NEWFALSE: requires_grad
        p.empty_ordered_dict();
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    p.str("meta");
    p.op(b'}');
    p.op(b'(');
    for (k, v) in meta {
        p.str(k);
        p.str(v);
    }
    p.op(b'u');
    p.op(b'u');
    p.op(b'.');
    p.0
}

/// Write `{"state_dict": ..., "meta": ...}` to `dest` atomically; `produce(i)` returns
/// tensor i's little-endian bytes.
pub fn write<E: From<WriteError>, B: AsRef<[u8]>>(
    dest: &Path,
    force: bool,
    tensors: &[OutTensor],
    meta: &[(String, String)],
    produce: impl FnMut(usize) -> Result<B, E>,
) -> Result<(), E> {
    write_with_root(dest, force, "state_dict", tensors, meta, produce)
}

/// As [`write`], with the state dict under `root_key` (`"model"` for unilm/deit-style files).
pub fn write_with_root<E: From<WriteError>, B: AsRef<[u8]>>(
    dest: &Path,
    force: bool,
    root_key: &str,
    tensors: &[OutTensor],
    meta: &[(String, String)],
    mut produce: impl FnMut(usize) -> Result<B, E>,
) -> Result<(), E> {
    let mut f = AtomicFile::create(dest, force)?;
    let zerr = |e: zip::result::ZipError| WriteError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let ioerr = |e: std::io::Error| WriteError::Io { path: dest.to_path_buf(), source: e };
    {
        let mut z = zip::ZipWriter::new(&mut f);
        let base = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644)
            .with_alignment(64);
        z.start_file("archive/data.pkl", base).map_err(zerr)?;
        z.write_all(&data_pkl(root_key, tensors, meta)).map_err(ioerr)?;
        z.start_file("archive/byteorder", base).map_err(zerr)?;
        z.write_all(b"little").map_err(ioerr)?;
        for (i, t) in tensors.iter().enumerate() {
            let opts = base.large_file(t.nbytes() >= u32::MAX as usize);
            z.start_file(format!("archive/data/{i}"), opts).map_err(zerr)?;
            let bytes = produce(i)?;
            z.write_all(bytes.as_ref()).map_err(ioerr)?;
        }
        z.start_file("archive/version", base).map_err(zerr)?;
        z.write_all(b"3\n").map_err(ioerr)?;
        z.finish().map_err(zerr)?;
    }
    f.commit()?;
    Ok(())
}
