//! `verify/libtorch.rs` (cargo feature `libtorch`): the rows `verify --libtorch` adds. The
//! source read through PyTorch itself (`crate::libtorch`) against what comer-port's readers
//! produced, and the written `.pth` read back through PyTorch against the `.safetensors`
//! artifact; both bit for bit (dtype, shape, bytes), the first differing key named.
//! docs/libtorch.md: for files the user trusts only.

use std::path::Path;

use super::compare::Check;
use super::parity::Result;
use crate::formats::{self, Checkpoint, Format};
use crate::libtorch::{self, CrossRead, LibtorchError};

/// The check of one cross-read: passed when both readers agree on every key; failed naming
/// the first key where they part.
fn check_of(name: String, cross: &CrossRead) -> Check {
    let n = cross.rows.len();
    match cross.first_difference() {
        None => Check::outcome(name, &[n], n, None, Some(format!("{n} tensors bit for bit (dtype, shape, bytes)"))),
        Some((i, row)) => {
            let why = row.differs.as_deref().unwrap_or_default();
            Check::outcome(name, &[n], n, Some(i), Some(format!("`{}`: {why}", row.key)))
        }
    }
}

/// What a failed read means for a check: libtorch has no reader for the container (skipped),
/// or it could not read a file comer-port read (failed, with libtorch's message).
fn read_failure(name: String, e: LibtorchError) -> Check {
    match e {
        LibtorchError::NoReader { .. } => Check::skipped(name, e.to_string()),
        other => Check::outcome(name, &[1], 1, Some(0), Some(other.to_string())),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The source as comer-port's readers produced it (`source`) against the same file read
/// through libtorch: every tensor, bit for bit.
pub fn source_check(source: &Checkpoint) -> Check {
    let name = format!("libtorch source {}", file_name(&source.path));
    if let Some(what) = source.full_model() {
        return Check::skipped(name, libtorch::full_model_reason(&what));
    }
    match libtorch::read(&source.path, source.format) {
        Ok(theirs) => check_of(name, &libtorch::cross_read(&source.tensors(), &theirs)),
        Err(e) => read_failure(name, e),
    }
}

/// The sibling `.pth` of `artifact` (same stem; `None` when there is none) read through
/// libtorch, its state dict (under the wrapper comer-port's reader finds in it:
/// `state_dict`) against the `.safetensors` artifact, bit for bit.
pub fn written_pth_check(artifact: &Path) -> Result<Option<Check>> {
    let pth = artifact.with_extension("pth");
    if !pth.is_file() {
        return Ok(None);
    }
    let name = format!("libtorch round trip {} vs .safetensors", file_name(&pth));
    let reference = formats::open(artifact)?;
    let (wrapper, _) = formats::open(&pth)?.state_dict();
    let theirs = match libtorch::read(&pth, Format::TorchZip) {
        Ok(t) => t,
        Err(e) => return Ok(Some(read_failure(name, e))),
    };
    let prefix = if wrapper.is_empty() { String::new() } else { format!("{wrapper}.") };
    let state_dict: Vec<libtorch::LtTensor> = theirs
        .into_iter()
        .filter_map(|mut t| {
            let key = t.name.strip_prefix(&prefix)?.to_string();
            t.name = key;
            Some(t)
        })
        .collect();
    Ok(Some(check_of(name, &libtorch::cross_read(&reference.tensors(), &state_dict))))
}

/// Every `--libtorch` row for `artifact` and its `source` (when given), in order.
pub fn checks(artifact: &Path, source: Option<&Checkpoint>) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    if let Some(src) = source {
        out.push(source_check(src));
    }
    out.extend(written_pth_check(artifact)?);
    Ok(out)
}
