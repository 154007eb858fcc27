//! Integration tests, built as one binary (ripgrep's layout). Each module is one concern.

/// Reference forward against upstream fixtures (issue 3).
mod forward;
/// One test per `ModelError` variant (issue 3).
mod model_errors;
/// `comer-port run` / `presets` / `bench` end to end (issue 3).
mod run_cli;
/// Shared helpers: fixture paths, temp files, running the binary.
mod util;
/// Every fixture reads and is detected right; values against independent ground truth.
mod formats;
/// Hostile and broken inputs from BAD_INPUTS.md: each refused with its typed error.
mod bad_inputs;
/// `comer-port inspect`: table, JSON, exit codes, one-line errors.
mod inspect;
/// `comer-port import`: layouts, mappings, transforms, init, writers (issue 4).
mod import;
/// `comer-port export onnx`: decode, outputs, determinism, refusals (issue 6).
mod onnx_export;
/// Source-family ViT forwards against the sources goldens; mapping parity (issue 5).
mod source_forward;
/// `comer-port verify`: source parity, tampered artifacts, golden folders (issue 5).
mod verify_cli;
/// `comer-port demo`: every step on the bundled fixture, listed files, refusals (issue 5).
mod demo_cli;
/// `comer-port verify --source --golden sources/<family>` for every family fixture (issue 5).
mod verify_sources;
/// Families added as one file + one mapping each: SigLIP / SigLIP 2, DeiT III (issue 12).
mod new_families;
/// No import cycle between the stage folders or inside one (issue 12).
mod module_graph;
/// Artifacts that lie: heads, fresh parameters, lossy claims, dtypes, source hash (issue 13).
mod tamper;
/// Issue 14 (hardening): amplification, zip bombs, lookup, CRC, non-files, writers, config
/// ranges, escaped names, output collisions.
#[cfg(target_os = "linux")]
mod hardening;
/// The newcomer's path: the preset chosen for the user, hub wrapper layouts, usage errors,
/// outputs named after the artifact, warnings about unverified artifacts (issue 15).
mod newcomer;
/// `--libtorch` (issue 17): both readers agree on every torch fixture and on a written `.pth`;
/// without the feature the flag is a usage error. The feature's half runs with
/// `--features libtorch` only.
mod libtorch;
