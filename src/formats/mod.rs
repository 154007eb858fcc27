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
pub mod safetensors_reader;
pub mod tensor;
pub mod value;

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
pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
    if path.is_dir() {
        return Err(FormatError::Unsupported {
            path: path.to_path_buf(),
            reason: "folders (Hugging Face layout) are not read yet".into(),
        });
    }
    let bytes_head = read_head(path, 8)?;
    if safetensors_reader::looks_like_safetensors(&bytes_head) {
        return safetensors_reader::read(path);
    }
    Err(FormatError::Unsupported {
        path: path.to_path_buf(),
        reason: "container not recognised".into(),
    })
}

/// First `n` bytes of a file (fewer when the file is shorter).
pub(crate) fn read_head(path: &Path, n: usize) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut buf = Vec::with_capacity(n);
    f.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| FormatError::io(path, e))?;
    Ok(buf)
}
