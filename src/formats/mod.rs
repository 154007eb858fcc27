//! `formats/`: read every checkpoint container without executing code.
//!
//! Mirrors what `torch.load(weights_only=True)` (torch/serialization.py and
//! torch/_weights_only_unpickler.py), `safetensors.safe_open`, `numpy.load` and
//! `transformers.PreTrainedModel.from_pretrained` read, but never runs pickle code: a
//! restricted pickle VM rebuilds the object tree and every tensor becomes a lazy
//! [`TensorView`] (dtype, shape, strides, storage offset) over memory-mapped storage.
//!
//! Every reader returns a [`Checkpoint`]: the top-level structure exactly as stored
//! (wrapper dicts, nesting, non-tensor values kept as metadata) plus the tensors in it.

pub mod dtype;
pub mod error;
pub mod hf;
pub mod legacy;
pub mod npy;
pub mod pickle;
pub mod safetensors_reader;
pub mod tensor;
pub mod torch_zip;
pub mod testkit;
pub mod value;
pub mod zip;

pub use dtype::DType;
pub use error::FormatError;
pub use tensor::{Storage, TensorView};
pub use value::Value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which container a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `torch.save` zip archive (`.pth`, `.pt`, `.bin`), PyTorch ≥ 1.6.
    TorchZip,
    /// Pre-1.6 legacy `torch.save` stream (magic number, protocol, sys_info, pickles, storages).
    TorchLegacy,
    /// TorchScript archive (`torch.jit.save` / `torch.jit.trace`), tensors from the attribute tree.
    TorchScript,
    /// A raw pickle with no container (rare; some `.bin` files).
    RawPickle,
    /// `.safetensors`.
    Safetensors,
    /// numpy `.npz` archive.
    Npz,
    /// numpy `.npy` single array.
    Npy,
    /// Hugging Face model folder (safetensors, `pytorch_model.bin`, sharded index, `config.json`).
    HfFolder,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchZip => "torch-zip",
            Format::TorchLegacy => "torch-legacy",
            Format::TorchScript => "torchscript",
            Format::RawPickle => "raw-pickle",
            Format::Safetensors => "safetensors",
            Format::Npz => "npz",
            Format::Npy => "npy",
            Format::HfFolder => "hf-folder",
        }
    }
}

/// A checkpoint as stored: its object tree and where it came from.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file or folder that was read.
    pub path: PathBuf,
    pub format: Format,
    /// The top-level object, unchanged: wrapper dicts, nesting, non-tensor values.
    pub root: Value,
    /// String metadata beside the object tree (safetensors `__metadata__`, HF `config.json`
    /// flattened, TorchScript/zip `version` records).
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Every tensor in the checkpoint, whatever its nesting, under its dotted path from the
    /// root (`model.blocks.0.attn.qkv.weight`, `state_dict.module.pos_embed`), in file order.
    pub fn tensors(&self) -> Vec<(String, &TensorView)> {
        let mut out = Vec::new();
        self.root.collect_tensors("", &mut out);
        out
    }

    /// Tensors of the state dict, with the wrapper (`model`, `state_dict`, `module`,
    /// `state_dict_ema`, …) and a shared `module.` prefix removed. Returns the wrapper path
    /// that was stripped (empty when the root is the state dict) and the tensors.
    pub fn state_dict(&self) -> (String, Vec<(String, &TensorView)>) {
        value::unwrap_state_dict(&self.root)
    }
}

/// Open any supported container by sniffing its bytes (never trusting the extension alone).
/// A folder is read as a Hugging Face model folder.
pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
    if path.is_dir() {
        return hf::read(path);
    }
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return Err(FormatError::Empty {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: the map is read-only; a file truncated under us by another process is the
    // same hazard every mmap-based reader (safetensors, candle) accepts.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    let map = std::sync::Arc::new(map);
    open_mapped(path, map)
}

/// Dispatch on the first bytes of a mapped file.
fn open_mapped(path: &Path, map: std::sync::Arc<memmap2::Mmap>) -> Result<Checkpoint, FormatError> {
    let head = &map[..map.len().min(16)];
    if zip::looks_like_zip(head) {
        let bytes: &[u8] = &map;
        let archive = zip::Archive::parse(path, bytes)?;
        let npz = !archive.members.is_empty() && archive.members.iter().all(|m| m.name.ends_with(".npy"));
        if npz {
            return npy::read_npz(path, Some(map.clone()), bytes);
        }
        return torch_zip::read(path, map.clone());
    }
    if npy::looks_like_npy(head) {
        return npy::read_npy(path, map);
    }
    if legacy::looks_like_legacy(head) {
        return legacy::read(path, map);
    }
    if legacy::looks_like_pickle(head) {
        return legacy::read_raw_pickle(path, &map);
    }
    if safetensors_reader::looks_like_safetensors(head) {
        return safetensors_reader::read(path);
    }
    Err(FormatError::unsupported(path, format!("container not recognised (starts with {})", describe_head(head))))
}

/// Read any container held in memory (used by the fuzz targets and tests): the same
/// dispatch as [`open`] without a file.
pub fn open_bytes(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty {
            path: path.to_path_buf(),
        });
    }
    let head = &bytes[..bytes.len().min(16)];
    if zip::looks_like_zip(head) {
        let archive = zip::Archive::parse(path, &bytes)?;
        let npz = !archive.members.is_empty() && archive.members.iter().all(|m| m.name.ends_with(".npy"));
        if npz {
            return npy::read_npz(path, None, &bytes);
        }
        return torch_zip::read_slice(path, bytes);
    }
    if npy::looks_like_npy(head) {
        return npy::read_npy_slice(path, bytes);
    }
    if legacy::looks_like_legacy(head) {
        return legacy::read_slice(path, &bytes);
    }
    if legacy::looks_like_pickle(head) {
        return legacy::read_raw_pickle(path, &bytes);
    }
    if safetensors_reader::looks_like_safetensors(head) {
        return safetensors_reader::read_slice(path, bytes);
    }
    Err(FormatError::unsupported(path, format!("container not recognised (starts with {})", describe_head(head))))
}

/// Name well-known non-checkpoint files by their magic, else show the first bytes.
fn describe_head(head: &[u8]) -> String {
    if head.starts_with(b"\x89PNG") {
        return "a PNG image signature".into();
    }
    if head.starts_with(b"\xff\xd8\xff") {
        return "a JPEG signature".into();
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

/// SHA-256 of a checkpoint: a file, or a folder's regular files in name order (what
/// `inspect` prints and `import` records). Read through a map, 64 MiB at a time, each
/// stretch dropped from the resident set once hashed; a read error is an error, never a
/// wrong hash.
pub fn sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut files = vec![path.to_path_buf()];
    if path.is_dir() {
        files = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        files.sort();
    }
    const STEP: usize = 64 << 20;
    for f in files {
        let file = std::fs::File::open(&f)?;
        if file.metadata()?.len() == 0 {
            continue;
        }
        // SAFETY: a read-only map of the source, the hazard `open` accepts too.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        for start in (0..map.len()).step_by(STEP) {
            let end = (start + STEP).min(map.len());
            h.update(&map[start..end]);
            // SAFETY: read-only shared file mapping, never written through: MADV_DONTNEED only
            // drops this process's page-table entries (see `Storage::release`).
            #[cfg(unix)]
            unsafe {
                let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
