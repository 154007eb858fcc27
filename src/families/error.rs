//! Typed errors of `import`: everything that can stop a source from becoming a target.
//! One test per variant lives with the import steps (`import/error_tests.rs`), which reach
//! every place a variant is raised.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The mapping file of a family is malformed (bad TOML, unknown transform, bad regex).
    #[error("mapping {family}: {reason}")]
    Mapping { family: String, reason: String },
    /// The family could not be recognised and none was given.
    #[error("could not tell which family this checkpoint belongs to ({reason}); pass --family")]
    UnknownFamily { reason: String },
    /// The source and the target disagree on a dimension (embed dim, depth, heads, mlp).
    #[error("source and target disagree on {what}: source {source_value}, target {target_value}")]
    DimensionMismatch { what: String, source_value: usize, target_value: usize },
    /// A target key a rule feeds from the source has no source tensor.
    #[error("target key '{target}' needs source key '{source_key}', which the checkpoint lacks")]
    MissingSource { target: String, source_key: String },
    /// A transform produced a shape other than the target's.
    #[error("target key '{target}': got shape {got:?} from {sources:?} but the target needs {want:?}")]
    ShapeMismatch { target: String, sources: Vec<String>, got: Vec<usize>, want: Vec<usize> },
    /// A transform could not be applied to its inputs.
    #[error("target key '{target}': {transform} failed: {reason}")]
    Transform { target: String, transform: String, reason: String },
    /// The source holds something the target layout cannot express; `--lossy` drops it.
    #[error("source key '{source_key}' cannot be expressed by the target: {reason} (pass --lossy to drop it; the report records the decision)")]
    Inexpressible { source_key: String, reason: String },
    /// A source key that no rule uses and no drop rule names.
    #[error("source key '{source_key}' is used by no rule of family {family} (did you pick the right family?)")]
    UnusedSource { source_key: String, family: String },
    /// A NaN or Inf with `--strict-finite`.
    #[error("source key '{source_key}' holds {count} non-finite values (--strict-finite)")]
    NonFinite { source_key: String, count: usize },
    /// A value overflows the output dtype.
    #[error("target key '{target}': {value} does not fit in {dtype}")]
    Overflow { target: String, value: f32, dtype: String },
    /// An option that is not implemented in this build.
    #[error("{0} is not supported in this build")]
    Unsupported(String),
    /// Reading an input failed.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
}
