//! `cli/`: the command line, part of the `comer-port` binary (not the library). `main` stays
//! thin: parse, run, print the error chain, map it to an exit code. Each subcommand lives in
//! its own file with its `Args` and `run`; `anyhow` is used here and nowhere in the library.
//!
//! Exit codes: 0 success; 1 a check failed (verify mismatch, non-finite weights under
//! `--check-finite`); 2 usage error (clap: unknown flag, bad value such as an unknown
//! `--preset` or `--family`, an out-of-range `--input-size`, `--batch` or `--size`,
//! conflicting flags; after parsing: a [`UsageError`], a choice the library says the command
//! must make, such as the target when no preset fits, a refused `--config` file, outputs that
//! are one file or that name an input); 3 bad input (unreadable, refused or mismatched file,
//! a config recorded in an artifact or taken from a source that is refused); 4 an output could
//! not be written (exists without `--force`, I/O error). 2 (after parsing), 3 and 4 come from
//! the library's typed errors through `comer_port::error::ErrorKind`. Every message is
//! printed escaped (`comer_port::text`): names from files cannot drive the terminal.

use std::path::Path;

use clap::{Parser, Subcommand};
use comer_port::error::ErrorKind;
use comer_port::meta::RecordedVerdict;
use comer_port::text::{Escaped, EscapedPath, escape_keeping_lines};

pub mod bench;
pub mod demo;
pub mod export;
pub mod import;
pub mod inspect;
pub mod presets;
pub mod run;
pub mod verify;
pub mod viz;

pub const EXIT_OK: i32 = 0;
pub const EXIT_CHECK_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_BAD_INPUT: i32 = 3;
pub const EXIT_OUTPUT: i32 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "comer-port",
    version,
    about = "Turn pretrained plain-ViT checkpoints into ViT-CoMer backbones, with proof",
    long_about = "comer-port reads PyTorch, TorchScript, safetensors, numpy and Hugging Face \
checkpoints without executing any pickle code, remaps them into the exact upstream ViT-CoMer \
layouts (vit-comer-det, vit-comer-seg, beit-comer), initialises the new CTI/MRFP parameters \
the way upstream does, and proves parity with a built-in reference forward pass.",
    after_help = "Examples:\n  comer-port demo\n  comer-port inspect beitv2.pth\n  comer-port import beitv2.pth -o comer.safetensors --pth comer.pth\n  comer-port verify comer.safetensors --source beitv2.pth\n  comer-port run --weights comer.safetensors --input img.png --viz pyramid.png\n  comer-port export onnx comer.safetensors --input-size 512x512 -o comer.onnx\n\nExit codes: 0 ok, 1 a check failed, 2 usage, 3 bad input, 4 output not written."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run inspect, import, verify, run --viz and export on the bundled fixture in one folder.
    Demo(demo::Args),
    /// Show what a checkpoint holds: container, tensors, detected family and config.
    Inspect(inspect::Args),
    /// Remap a checkpoint into a ViT-CoMer layout with freshly initialised CTI/MRFP parameters.
    Import(import::Args),
    /// Prove an artifact's numerical parity with its source and re-read what was written.
    Verify(verify::Args),
    /// Run the reference forward pass on an image or a safetensors batch.
    Run(run::Args),
    /// Time the reference forward pass on random weights.
    Bench(bench::Args),
    /// List the named configurations of real upstream models.
    Presets(presets::Args),
    /// Export an artifact to another format.
    Export(export::Args),
}

/// Parse the command line, run, print errors as one chain, return the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Import(a) => import::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Presets(a) => presets::run(a),
        Command::Export(a) => export::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // The library escapes the keys and paths its errors name; this is the last guard
            // for whatever else a message carries (an OS error, a context). Messages that
            // list keys one per line keep their lines; a link the chain repeats is shown once.
            eprintln!("error: {}", escape_keeping_lines(&chain_text(&err)));
            exit_code_for(&err)
        }
    }
}

/// The error chain in one line, `outer: inner: …`, each link once: a link whose text an
/// outer one already shows (`FormatError::Io` prints its OS error and also returns it as its
/// source) is not repeated.
pub fn chain_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for link in err.chain() {
        let text = link.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A usage error found after parsing: arguments the parser accepts one by one but that
/// say nothing to do (exit 2). Its message is printed through the escaping of every error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--help` of `--libtorch` (inspect and verify): what it does, and for which files.
pub const LIBTORCH_HELP: &str = "Read the file a second time through PyTorch itself (torch.load of the \
torch 2.13 wheel this binary is linked with; torch::jit::load for TorchScript archives) and compare every \
tensor bit for bit (dtype, shape, bytes) with comer-port's own reader, naming the first key that differs. \
ONLY FOR FILES YOU TRUST: libtorch's and PyTorch's unpicklers have had memory-safety bugs \
(CVE-2026-24747), and loading a TorchScript archive runs its code (the reason \
torch.load(weights_only=True) refuses them since CVE-2025-32434). comer-port's own reader stays the one \
that faces untrusted files. Needs a binary built with `--features libtorch` (docs/libtorch.md).";

/// `--libtorch` in a binary built without the `libtorch` feature: a usage error (exit 2)
/// saying how to build one that has it.
#[cfg(not(feature = "libtorch"))]
pub fn no_libtorch() -> UsageError {
    UsageError(
        "--libtorch: this comer-port was built without the `libtorch` cargo feature; build one with it \
         inside a virtualenv holding torch==2.13.*: `LIBTORCH_USE_PYTORCH=1 cargo build --release --features \
         libtorch` (docs/libtorch.md)"
            .into(),
    )
}

/// Map an error chain to an exit code: a [`UsageError`] is usage; else the first link the
/// library classifies ([`ErrorKind::of`]) decides; an unclassified chain (a message) is bad
/// input.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        return EXIT_USAGE;
    }
    match err.chain().find_map(ErrorKind::of) {
        Some(ErrorKind::OutputNotWritten) => EXIT_OUTPUT,
        Some(ErrorKind::Usage) => EXIT_USAGE,
        Some(ErrorKind::BadInput) | None => EXIT_BAD_INPUT,
    }
}

/// Warn on stderr when the artifact at `path` (header map `metadata`) records a failed
/// verification or none (not run, absent, unreadable): `run` and `export` use what they are
/// given, but say so.
pub fn warn_unless_verified(path: &Path, metadata: &std::collections::BTreeMap<String, String>) {
    let p = EscapedPath(path);
    let check = format!("check it with `comer-port verify {p} --source SOURCE`");
    match RecordedVerdict::of(metadata) {
        // A lossy verdict is a verification that ran: what was dropped was asked for and measured.
        RecordedVerdict::Passed | RecordedVerdict::PassedWithApproximations | RecordedVerdict::Lossy => {}
        RecordedVerdict::Failed(first) => eprintln!(
            "warning: {p}: the verification recorded at import FAILED{}; its outputs may be wrong ({check})",
            first.map(|f| format!(" (first failure: {})", Escaped(&f))).unwrap_or_default()
        ),
        RecordedVerdict::NotRun(why) => eprintln!("warning: {p}: not verified at import ({}); {check}", Escaped(&why)),
        RecordedVerdict::Missing(what) => {
            eprintln!("warning: {p}: records no verification verdict ({}); {check}", Escaped(&what))
        }
    }
}
