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
//!
//! Files are memory-mapped only here ([`map_file`]), and [`sha256`] is the crate's one
//! checkpoint hash (what `inspect` prints and `import` records).

pub(crate) mod dtype;
pub(crate) mod error;
pub(crate) mod hf;
pub mod legacy;
mod mapped;
pub mod npy;
pub mod pickle;
pub mod safetensors_reader;
pub(crate) mod tensor;
pub mod torch_zip;
pub mod testkit;
pub(crate) mod value;
pub(crate) mod zip;

pub use dtype::DType;
pub use error::FormatError;
pub use mapped::{MappedFile, checkpoint_files, map_file, sha256, sha256_bytes};
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
    /// Short name (`torch-zip`, `safetensors`, `hf-folder`, …).
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
    /// The container it was read as.
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
    let len = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return Err(FormatError::Empty {
            path: path.to_path_buf(),
        });
    }
    let map = std::sync::Arc::new(map_file(path).map_err(|e| FormatError::io(path, e))?);
    open_mapped(path, map)
}

/// Dispatch on the first bytes of a mapped file.
fn open_mapped(path: &Path, map: std::sync::Arc<MappedFile>) -> Result<Checkpoint, FormatError> {
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

