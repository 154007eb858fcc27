//! Typed errors of `import`: everything that can stop a source from becoming a target.
//! One test per variant lives with the import steps (`import/error_tests.rs`), which reach
//! every place a variant is raised.

use crate::text::esc;
use std::path::PathBuf;

/// Why a source could not become a target; each variant names the key, family or file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The mapping file of a family is malformed (bad TOML, unknown transform, bad regex).
    #[error("mapping {family}: {reason}", family = esc(.family), reason = esc(.reason))]
    Mapping {
        /// The family whose mapping is broken.
        family: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The family could not be recognised and none was given.
    #[error("could not tell which family this checkpoint belongs to ({reason}); pass --family", reason = esc(.reason))]
    UnknownFamily {
        /// Why no family applies.
        reason: String,
    },
    /// A family recognised the keys, but they describe a model no ViT-CoMer flavour can hold
    /// (a SwiGLU MLP where upstream's blocks have fc1 -> GELU -> fc2).
    #[error("this {family} checkpoint cannot become a ViT-CoMer backbone: {reason}")]
    CannotHold {
        /// The family whose layout the keys follow.
        family: String,
        /// What the target cannot hold, the key, and what to use instead.
        reason: String,
    },
    /// `--family` names no registered family.
    #[error("no source family '{name}'; the known families are: {known}", name = esc(.name), known = esc(.known))]
    NoSuchFamily {
        /// The name given.
        name: String,
        /// Every registered family's name.
        known: String,
    },
    /// The family was given, and the checkpoint's keys are not that family's.
    #[error("not a {family} checkpoint: {reason} (the family was given, not detected: leave --family out to detect it from the keys)", family = esc(.family), reason = esc(.reason))]
    NotThisFamily {
        /// The family given.
        family: String,
        /// Why its reader refused the keys.
        reason: String,
    },
    /// The source is a ViT-CoMer artifact already (written by comer-port or upstream).
    #[error(
        "{path} is already a ViT-CoMer artifact ({why}); import reads plain-ViT source checkpoints: \
         use this file with `comer-port verify`, `run` or `export`, or import the checkpoint it was made from", path = esc(.path), why = esc(.why)
    )]
    AlreadyArtifact {
        /// The source given.
        path: PathBuf,
        /// What gives it away (a key such as `level_embed`, or comer-port's metadata).
        why: String,
    },
    /// The source and the target disagree on a dimension (embed dim, depth, heads, mlp).
    #[error("source and target disagree on {what}: source {source_value}, target {target_value}", what = esc(.what))]
    DimensionMismatch {
        /// The dimension (`embed dim`, `depth`, …).
        what: String,
        /// The source's value.
        source_value: usize,
        /// The target's value.
        target_value: usize,
    },
    /// A target key a rule feeds from the source has no source tensor.
    #[error("target key '{target}' needs source key '{source_key}', which the checkpoint lacks", target = esc(.target), source_key = esc(.source_key))]
    MissingSource {
        /// The target key.
        target: String,
        /// The source key it needs.
        source_key: String,
    },
    /// A transform produced a shape other than the target's.
    #[error("target key '{target}': got shape {got:?} from {sources:?} but the target needs {want:?}", target = esc(.target))]
    ShapeMismatch {
        /// The target key.
        target: String,
        /// The source keys it was produced from.
        sources: Vec<String>,
        /// The shape produced.
        got: Vec<usize>,
        /// The shape the target needs.
        want: Vec<usize>,
    },
    /// A transform could not be applied to its inputs.
    #[error("target key '{target}': {transform} failed: {reason}", target = esc(.target), reason = esc(.reason))]
    Transform {
        /// The target key.
        target: String,
        /// The transform's name.
        transform: String,
        /// Why it failed.
        reason: String,
    },
    /// The source holds something the target layout cannot express; `--lossy` drops it.
    #[error("source key '{source_key}' cannot be expressed by the target: {reason} (pass --lossy to drop it; the report records the decision)", source_key = esc(.source_key), reason = esc(.reason))]
    Inexpressible {
        /// The source key.
        source_key: String,
        /// What the target layout lacks.
        reason: String,
    },
    /// A source key that no rule uses and no drop rule names.
    #[error("source key '{source_key}' is used by no rule of family {family} (did you pick the right family?)", source_key = esc(.source_key), family = esc(.family))]
    UnusedSource {
        /// The source key.
        source_key: String,
        /// The family whose rules were applied.
        family: String,
    },
    /// A NaN or Inf with `--strict-finite`.
    #[error("source key '{source_key}' holds {count} non-finite values (--strict-finite)", source_key = esc(.source_key))]
    NonFinite {
        /// The key (the target key for produced values).
        source_key: String,
        /// How many values are NaN or infinite.
        count: usize,
    },
    /// A value overflows the output dtype.
    #[error("target key '{target}': {value} does not fit in {dtype}", target = esc(.target))]
    Overflow {
        /// The target key.
        target: String,
        /// The value that does not fit.
        value: f32,
        /// The output dtype.
        dtype: String,
    },
    /// An option that is not implemented in this build.
    #[error("{} is not supported in this build", esc(.0))]
    Unsupported(String),
    /// Reading an input failed.
    #[error("{path}: {reason}", path = esc(.path), reason = esc(.reason))]
    Input {
        /// The input.
        path: PathBuf,
        /// What reading it reported.
        reason: String,
    },
}
