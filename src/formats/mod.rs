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

    /// What a full-model pickle (`torch.save(model)` of a `torch.nn` / timm module) holds, in
    /// words, when the state dict comes from one: it is read as `model.state_dict()` would
    /// give it, never instantiated.
    pub fn full_model(&self) -> Option<String> {
        value::full_model(&self.root)
    }
}

/// Memory bounds for reading one checkpoint (see `docs/guarantees.md`). Tensor bytes that
/// are memory-mapped from the file are never counted: these bound what the readers build in
/// memory from the file's bytes.
///
/// [`open`] and [`open_bytes`] use [`ReadLimits::from_env`]; [`open_with`] and
/// [`open_bytes_with`] take them explicitly (the CLI's flags set them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadLimits {
    /// Bytes the pickle VM may materialise while running one pickle stream: every value,
    /// string and container it builds, and every copy made by DUP, BINGET/GET, MEMOIZE/PUT
    /// and memo refreshes, counted cumulatively (so the bound holds for time as well as
    /// memory). `None`: [`pickle::BUDGET_SLACK`] + [`pickle::BUDGET_PER_BYTE`] × the
    /// pickle's length. Override: `COMER_PORT_PICKLE_BUDGET`.
    pub pickle_bytes: Option<u64>,
    /// Bytes the deflated members of one zip archive (`.npz`, or a `.pth` with compressed
    /// records) may inflate to, all members together. `None`: [`zip::INFLATE_RATIO`] × the
    /// archive's size + [`zip::INFLATE_SLACK`]. Override: `COMER_PORT_INFLATE_BUDGET`.
    pub inflate_bytes: Option<u64>,
    /// Stored `.pth` records are CRC-checked on first use ([`Storage::check`],
    /// [`Storage::accept_crc`]) instead of while the archive is read. Whoever sets it checks
    /// every storage it reads before trusting its bytes; the import hashes each record while
    /// it writes it and checks the rest before verifying or publishing.
    pub defer_crc: bool,
}

/// Environment variable overriding [`ReadLimits::pickle_bytes`] (bytes; `k`/`M`/`G` suffixes).
pub const PICKLE_BUDGET_ENV: &str = "COMER_PORT_PICKLE_BUDGET";
/// Environment variable overriding [`ReadLimits::inflate_bytes`] (bytes; `k`/`M`/`G` suffixes).
pub const INFLATE_BUDGET_ENV: &str = "COMER_PORT_INFLATE_BUDGET";

impl ReadLimits {
    /// The defaults, overridden by [`PICKLE_BUDGET_ENV`] / [`INFLATE_BUDGET_ENV`] when set.
    /// An unparsable value is an error naming the variable.
    pub fn from_env() -> Result<ReadLimits, String> {
        let get = |name: &str| -> Result<Option<u64>, String> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => {
                    parse_bytes(&v).map(Some).ok_or_else(|| format!("{name}={v:?} is not a byte count (e.g. 512M)"))
                }
                _ => Ok(None),
            }
        };
        Ok(ReadLimits {
            pickle_bytes: get(PICKLE_BUDGET_ENV)?,
            inflate_bytes: get(INFLATE_BUDGET_ENV)?,
            defer_crc: false,
        })
    }
}

/// `123`, `64k`, `512M`, `2G` (binary multiples) as bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn env_limits(path: &Path) -> Result<ReadLimits, FormatError> {
    ReadLimits::from_env().map_err(|reason| FormatError::unsupported(path, reason))
}

/// What a non-regular file is, for [`FormatError::NotAFile`].
pub(crate) fn kind_of(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "socket";
        }
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
    }
    if ft.is_dir() {
        return "folder";
    }
    "special file"
}

/// Open a regular file for reading, refusing anything else without blocking: the path is
/// checked with `stat` before it is opened (a FIFO, device or socket is never opened), and
/// opened non-blocking (a FIFO swapped in between cannot hang the open) and checked again
/// with `fstat` on the descriptor.
pub fn open_regular(path: &Path) -> Result<std::fs::File, FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if !meta.is_file() {
        return Err(FormatError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = opts.open(path).map_err(|e| FormatError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
    if !meta.is_file() {
        return Err(FormatError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok(file)
}

/// Open any supported container by sniffing its bytes (never trusting the extension alone).
/// A folder is read as a Hugging Face model folder; FIFOs, devices and sockets are refused
/// ([`FormatError::NotAFile`]). Memory bounds: [`ReadLimits::from_env`].
pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
    open_with(path, &env_limits(path)?)
}

/// Metadata key naming the MLP activation when the checkpoint or its folder says which
/// (`quick-gelu` or `gelu`): TorchScript module classes, open_clip's config.
pub const META_ACTIVATION: &str = "activation";
/// Metadata key saying where [`META_ACTIVATION`] was read (in words).
pub const META_ACTIVATION_FROM: &str = "activation.from";

/// [`open`] with explicit memory bounds. An `open_clip_config.json` beside a file (or in a
/// folder) names the activation ([`hf::open_clip_quick_gelu`]) unless the archive itself did.
pub fn open_with(path: &Path, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let mut ck = open_file_with(path, limits)?;
    if !ck.metadata.contains_key(META_ACTIVATION)
        && let Some((quick, cfg)) = hf::open_clip_quick_gelu(path)?
    {
        let name = cfg.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        ck.metadata.insert(META_ACTIVATION.into(), if quick { "quick-gelu" } else { "gelu" }.into());
        ck.metadata.insert(META_ACTIVATION_FROM.into(), format!("{name} (model_cfg.quick_gelu = {quick})"));
    }
    Ok(ck)
}

/// [`open_with`] without looking beside the file (a folder's shards are read with this).
pub(crate) fn open_file_with(path: &Path, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        return hf::read_with(path, limits);
    }
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return Err(FormatError::Empty {
            path: path.to_path_buf(),
        });
    }
    // A file truncated under us by another process: the bytes read so far are checked (CRC-32
    // of every zip record read), but a page cut off after that raises SIGBUS
    // (docs/guarantees.md).
    let map = MappedFile::of(&file).map_err(|e| FormatError::io(path, e))?;
    let map = std::sync::Arc::new(map);
    open_mapped(path, map, limits)
}

/// Dispatch on the first bytes of a mapped file.
fn open_mapped(path: &Path, map: std::sync::Arc<MappedFile>, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let head = &map[..map.len().min(16)];
    if zip::looks_like_zip(head) {
        let bytes: &[u8] = &map;
        let archive = zip::Archive::parse(path, bytes)?;
        if is_npz(&archive) {
            return npy::read_npz_with(path, Some(map.clone()), bytes, limits);
        }
        return torch_zip::read_with(path, torch_zip::Source::Map(map.clone()), limits);
    }
    if npy::looks_like_npy(head) {
        return npy::read_npy(path, map);
    }
    if safetensors_reader::fits_safetensors(head, map.len()) {
        return safetensors_reader::read_mapped(path, map);
    }
    if legacy::looks_like_legacy(head) {
        return legacy::read_with_limits(path, map, limits);
    }
    if legacy::looks_like_pickle(head) {
        return legacy::read_raw_pickle_with(path, &map, limits);
    }
    if safetensors_reader::looks_like_safetensors(head) {
        return safetensors_reader::read_mapped(path, map);
    }
    Err(FormatError::unsupported(path, format!("container not recognised (starts with {})", describe_head(head))))
}

/// An archive whose members are all `.npy` arrays.
fn is_npz(archive: &zip::Archive<'_>) -> bool {
    !archive.members.is_empty() && archive.members.iter().all(|m| m.name.ends_with(".npy"))
}

/// Read any container held in memory (used by the fuzz targets and tests): the same
/// dispatch as [`open`] without a file.
pub fn open_bytes(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, FormatError> {
    open_bytes_with(path, bytes, &env_limits(path)?)
}

/// [`open_bytes`] with explicit memory bounds.
pub fn open_bytes_with(path: &Path, bytes: Vec<u8>, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty {
            path: path.to_path_buf(),
        });
    }
    let head = &bytes[..bytes.len().min(16)];
    if zip::looks_like_zip(head) {
        let archive = zip::Archive::parse(path, &bytes)?;
        if is_npz(&archive) {
            return npy::read_npz_with(path, None, &bytes, limits);
        }
        return torch_zip::read_with(path, torch_zip::Source::Owned(std::sync::Arc::new(bytes)), limits);
    }
    if npy::looks_like_npy(head) {
        return npy::read_npy_slice(path, bytes);
    }
    if safetensors_reader::fits_safetensors(head, bytes.len()) {
        return safetensors_reader::read_slice(path, bytes);
    }
    if legacy::looks_like_legacy(head) {
        return legacy::read_slice_with(path, &bytes, limits);
    }
    if legacy::looks_like_pickle(head) {
        return legacy::read_raw_pickle_with(path, &bytes, limits);
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

