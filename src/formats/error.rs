//! The `formats/` stage's one error enum. Every variant names the file and, where there is
//! one, the entry (zip member, tensor key, pickle offset) and the reason.

use crate::text::esc;
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be read; nothing in it was executed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened or read.
    #[error("{path}: {source}", path = esc(.path))]
    Io {
        /// The file (or folder) read.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a container comer-port reads (or a feature of it is not supported).
    #[error("{path}: unsupported: {reason}", path = esc(.path), reason = esc(.reason))]
    Unsupported {
        /// The file (or folder) read.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// The container is structurally broken (truncated, bad header, bad offsets).
    #[error("{path}: corrupt {what}: {reason}", path = esc(.path), what = esc(.what), reason = esc(.reason))]
    Corrupt {
        /// The file (or folder) read.
        path: PathBuf,
        /// The broken part (`zip`, `safetensors header`, `storage`, …).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor's metadata does not fit its storage (offset/stride/shape lies, overflow).
    #[error("{path}: tensor '{tensor}': {reason}", path = esc(.path), tensor = esc(.tensor), reason = esc(.reason))]
    BadTensor {
        /// The file (or folder) read.
        path: PathBuf,
        /// The tensor's key.
        tensor: String,
        /// What does not fit.
        reason: String,
    },
    /// The pickle names a global that the allowlist refuses (never executed).
    #[error(
        "{path}: {entry}: refused pickle global '{module}.{name}' (not on the weights-only allowlist; nothing was executed)", path = esc(.path), entry = esc(.entry), module = esc(.module), name = esc(.name)
    )]
    ForbiddenGlobal {
        /// The file (or folder) read.
        path: PathBuf,
        /// The pickle's archive member and the opcode's byte offset.
        entry: String,
        /// The global's module.
        module: String,
        /// The global's name.
        name: String,
    },
    /// The pickle stream is malformed or abusive (bad opcode, stack underflow, length lie).
    #[error("{path}: {entry}: bad pickle at byte {offset}: {reason}", path = esc(.path), entry = esc(.entry), reason = esc(.reason))]
    Pickle {
        /// The file (or folder) read.
        path: PathBuf,
        /// The pickle's entry in the container.
        entry: String,
        /// Byte offset of the offending opcode.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A zip entry name that could escape a folder (`../`, absolute, drive letter, backslash).
    #[error("{path}: {entry}: unsafe entry name (path traversal refused)", path = esc(.path), entry = esc(.entry))]
    UnsafeEntryName {
        /// The file (or folder) read.
        path: PathBuf,
        /// The entry name.
        entry: String,
    },
    /// A zip member whose CRC-32 does not match its bytes.
    #[error("{path}: {entry}: CRC mismatch (stored {expected:08x}, computed {found:08x})", path = esc(.path), entry = esc(.entry))]
    CrcMismatch {
        /// The file (or folder) read.
        path: PathBuf,
        /// The zip member.
        entry: String,
        /// CRC-32 stored in the archive.
        expected: u32,
        /// CRC-32 of the bytes read.
        found: u32,
    },
    /// A declared size over a named limit (deflate bomb, absurd header length): refused
    /// before anything of that size is allocated.
    #[error("{path}: {entry}: declares {claimed} bytes, over the limit of {limit}", path = esc(.path), entry = esc(.entry))]
    TooLarge {
        /// The file (or folder) read.
        path: PathBuf,
        /// What declares the size.
        entry: String,
        /// The declared size.
        claimed: u64,
        /// The named limit it passes.
        limit: u64,
    },
    /// A declared length larger than the bytes present (a length lie or a truncated file).
    #[error("{path}: {entry}: needs {needed} bytes but only {available} are present (truncated or lying)", path = esc(.path), entry = esc(.entry))]
    Truncated {
        /// The file (or folder) read.
        path: PathBuf,
        /// What declares the length.
        entry: String,
        /// Bytes declared.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// A record the container must have is missing (`data.pkl`, `data/N`, a shard).
    #[error("{path}: missing {entry}", path = esc(.path), entry = esc(.entry))]
    MissingEntry {
        /// The file (or folder) read.
        path: PathBuf,
        /// The missing record.
        entry: String,
    },
    /// The file is empty.
    #[error("{path}: empty file", path = esc(.path))]
    Empty {
        /// The file (or folder) read.
        path: PathBuf,
    },
    /// A `.npy` array of Python objects (would need pickle execution): refused.
    #[error("{path}: {entry}: numpy object arrays are refused (they hold pickled Python objects)", path = esc(.path), entry = esc(.entry))]
    ObjectArray {
        /// The file (or folder) read.
        path: PathBuf,
        /// The array's name.
        entry: String,
    },
    /// Two tensors stored under one key.
    #[error("{path}: {entry}: duplicate key '{key}' names two tensors", path = esc(.path), entry = esc(.entry), key = esc(.key))]
    DuplicateKey {
        /// The file (or folder) read.
        path: PathBuf,
        /// Where the duplicate was found.
        entry: String,
        /// The key named twice.
        key: String,
    },
    /// Reading would build more than a memory budget allows from the file's bytes (the
    /// pickle VM's values and every copy DUP / BINGET / MEMOIZE makes; or the inflated bytes
    /// of an archive's deflated members, all together): refused before the allocation.
    /// [`super::ReadLimits`] says how to raise it.
    #[error("{path}: {entry}: reading would build more than {limit} bytes in memory (the {knob} budget; set {env} to raise it)", path = esc(.path), entry = esc(.entry))]
    OverBudget {
        /// The file.
        path: PathBuf,
        /// The entry being read.
        entry: String,
        /// The budget that was reached, in bytes.
        limit: u64,
        /// Which budget (`pickle` or `inflate`).
        knob: &'static str,
        /// The environment variable that overrides it.
        env: &'static str,
    },
    /// Two zip entries whose bytes overlap (many directory entries sharing one deflate
    /// stream is a decompression-bomb shape): refused before either is read.
    #[error("{path}: zip entries '{entry}' and '{other}' share bytes (overlapping member data is refused)", path = esc(.path), entry = esc(.entry), other = esc(.other))]
    OverlappingEntries {
        /// The archive.
        path: PathBuf,
        /// One entry.
        entry: String,
        /// The entry it overlaps.
        other: String,
    },
    /// The input is a FIFO, device, socket or other non-regular file: refused without reading.
    #[error("{path}: is a {kind}, not a regular file or folder (refused without reading it)", path = esc(.path))]
    NotAFile {
        /// The input.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A file in a model folder is a symbolic link to somewhere outside that folder.
    #[error("{path}: is a symbolic link to {target}, outside the model folder (refused without reading it)", path = esc(.path), target = esc(.target))]
    SymlinkEscape {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
}

impl FormatError {
    /// The path the error names.
    pub fn path(&self) -> &Path {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Unsupported { path, .. }
            | FormatError::Corrupt { path, .. }
            | FormatError::BadTensor { path, .. }
            | FormatError::ForbiddenGlobal { path, .. }
            | FormatError::Pickle { path, .. }
            | FormatError::UnsafeEntryName { path, .. }
            | FormatError::CrcMismatch { path, .. }
            | FormatError::TooLarge { path, .. }
            | FormatError::Truncated { path, .. }
            | FormatError::MissingEntry { path, .. }
            | FormatError::Empty { path }
            | FormatError::ObjectArray { path, .. }
            | FormatError::DuplicateKey { path, .. }
            | FormatError::OverBudget { path, .. }
            | FormatError::OverlappingEntries { path, .. }
            | FormatError::NotAFile { path, .. }
            | FormatError::SymlinkEscape { path, .. } => path,
        }
    }
    /// [`FormatError::Unsupported`] for `path`.
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> Self {
        FormatError::Unsupported {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    /// [`FormatError::MissingEntry`] for `path`.
    pub fn missing(path: &Path, entry: impl Into<String>) -> Self {
        FormatError::MissingEntry {
            path: path.to_path_buf(),
            entry: entry.into(),
        }
    }
    /// [`FormatError::Truncated`] for `path`.
    pub fn truncated(path: &Path, entry: impl Into<String>, needed: u64, available: u64) -> Self {
        FormatError::Truncated {
            path: path.to_path_buf(),
            entry: entry.into(),
            needed,
            available,
        }
    }
    /// [`FormatError::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    /// [`FormatError::Corrupt`] for `path`.
    pub fn corrupt(path: &Path, what: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
            reason: reason.into(),
        }
    }
    /// [`FormatError::BadTensor`] for `path`.
    pub fn bad_tensor(path: &Path, tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
