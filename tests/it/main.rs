//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

/// Shared helpers: fixture paths, temp files, running the binary.
mod util;
/// Every fixture reads and is detected right; values against independent ground truth.
mod formats;
/// Hostile and broken inputs from BAD_INPUTS.md: each refused with its typed error.
mod bad_inputs;
/// `comer-port inspect`: table, JSON, exit codes, one-line errors.
mod inspect;
/// `comer-port import` (issue 4): layouts, every family, goldens, determinism, refusals.
mod import;
