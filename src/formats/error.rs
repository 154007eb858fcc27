//! The `formats/` stage's one error enum. Every variant names the file and, where there is
//! one, the entry (zip member, tensor key, pickle offset) and the reason.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a container comer-port reads (or a feature of it is not supported).
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// The container is structurally broken (truncated, bad header, bad offsets).
    #[error("{path}: corrupt {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
    /// A tensor's metadata does not fit its storage (offset/stride/shape lies, overflow).
    #[error("{path}: tensor '{tensor}': {reason}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// The pickle names a global that the allowlist refuses (never executed).
    #[error(
        "{path}: {entry}: refused pickle global '{module}.{name}' (not on the weights-only allowlist; nothing was executed)"
    )]
    ForbiddenGlobal {
        path: PathBuf,
        entry: String,
        module: String,
        name: String,
    },
    /// The pickle stream is malformed or abusive (bad opcode, stack underflow, length lie).
    #[error("{path}: {entry}: bad pickle at byte {offset}: {reason}")]
    Pickle {
        path: PathBuf,
        entry: String,
        offset: usize,
        reason: String,
    },
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: &Path, what: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
            reason: reason.into(),
        }
    }
    pub fn bad_tensor(path: &Path, tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
