//! Which ViT-CoMer configuration an artifact targets: `--preset`, `--config` file, the
//! artifact's recorded config, or a flavour with the source's dimensions.
//!
//! The one config resolver: `import` resolves against the source it reads (a flavour takes
//! the source's dimensions), `run`, `verify`, `export` and `demo` against an artifact (an
//! explicit `--config` / `--preset` wins, else the config the artifact records in its
//! `comer_port.config` metadata). Configs themselves are `model::ComerConfig` in upstream's
//! `case.json` shape; the named ones are `model::presets`. When `import` is given no target,
//! [`pick_preset`] chooses the preset whose flavour fits the source's family and whose
//! dimensions are the source's.

use crate::text::esc;
use std::path::{Path, PathBuf};

use crate::families::error::ImportError;
use crate::families::{Family, SourceConfig};
use crate::formats::FormatError;
use crate::model::{ComerConfig, ConfigError, Flavor, presets};

/// Metadata key under which an artifact records its config (`case.json` shape).
pub const CONFIG_METADATA_KEY: &str = "comer_port.config";

/// How the target configuration is chosen.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A named preset (see `model::presets`).
    Preset(String),
    /// A config file in the fixtures' `case.json` shape.
    ConfigFile(PathBuf),
    /// A config already in hand.
    Config(Box<ComerConfig>),
    /// A flavour with dimensions inferred from the source, upstream's defaults otherwise; the
    /// input size it is made for when given (`--img-size`, see [`from_source`]).
    Flavor(Flavor, Option<usize>),
    /// The config the artifact records in its [`CONFIG_METADATA_KEY`] metadata.
    Recorded,
    /// Nothing named: for a source, the preset [`pick_preset`] chooses for its family and
    /// dimensions (`import` resolves it, knowing the family); for an artifact, its recorded
    /// config.
    Auto,
}

impl TargetSpec {
    /// The spec `--config FILE` or `--preset NAME` names (the parsers let at most one
    /// through), or `None` when neither is given.
    pub fn from_flags(config: Option<&Path>, preset: Option<&str>) -> Option<TargetSpec> {
        match (config, preset) {
            (Some(path), _) => Some(TargetSpec::ConfigFile(path.to_path_buf())),
            (None, Some(name)) => Some(TargetSpec::Preset(name.to_string())),
            (None, None) => None,
        }
    }
}

/// What a spec is resolved against.
#[derive(Debug, Clone, Copy)]
pub enum Basis<'a> {
    /// A source being imported, with its own config as its family's detector read it (what
    /// [`TargetSpec::Flavor`] takes).
    Source(&'a SourceConfig),
    /// An artifact on disk (what [`TargetSpec::Recorded`] reads; opened only then).
    Artifact(&'a Path),
}

/// Why no configuration could be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A `--config` file or the artifact could not be read.
    #[error("{path}: {reason}", path = esc(.path), reason = esc(.reason))]
    Input {
        /// The file.
        path: PathBuf,
        /// What reading it reported.
        reason: String,
    },
    /// A config neither read from a `--config` file nor recorded in an artifact is refused:
    /// an unknown preset, a config in hand, or one taken from a source's dimensions (the
    /// source is then the bad input).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `--config` file's content is refused: not JSON of the `case.json` shape, a keyword
    /// upstream does not take, a value out of range or inconsistent. The command named it, so
    /// this is a usage error (exit 2).
    #[error("{path}: {error} (fix the file, or choose --preset NAME)", path = esc(.path))]
    ConfigFile {
        /// The `--config` file.
        path: PathBuf,
        /// Why its config is refused.
        error: ConfigError,
    },
    /// The config an artifact records in its [`CONFIG_METADATA_KEY`] metadata is refused:
    /// the artifact is the bad input (exit 3).
    #[error("{path}: its recorded '{CONFIG_METADATA_KEY}' is refused: {error} (pass --config C.json or --preset NAME to use another)", path = esc(.path))]
    Recorded {
        /// The artifact.
        path: PathBuf,
        /// Why the recorded config is refused.
        error: ConfigError,
    },
    /// The artifact whose recorded config was asked for is not a checkpoint comer-port reads.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A flavour was asked for where there is no source to take its dimensions from.
    #[error("--flavor {flavor} takes its dimensions from a source checkpoint; for an artifact pass --config or --preset")]
    UnknownDims {
        /// The flavour asked for.
        flavor: String,
    },
    /// A source checkpoint was given where an artifact is read (`run`, `verify`, `export`).
    #[error(
        "{path} is a source checkpoint ({family}, {format}), not a ViT-CoMer artifact: make one with \
         `comer-port import {path} -o ARTIFACT.safetensors`, then give that file here"
    )]
    SourceNotArtifact {
        /// The file given.
        path: PathBuf,
        /// The family its keys were detected as.
        family: String,
        /// Its container.
        format: String,
    },
    /// An artifact was given in a container `run`, `verify` and `export` do not read (the
    /// `.pth` import writes for PyTorch).
    #[error(
        "{path} is a ViT-CoMer artifact in {format}; run, verify and export read the .safetensors artifact \
         `comer-port import` writes (-o X.safetensors; its .pth sibling is for PyTorch's load_state_dict)"
    )]
    NotSafetensors {
        /// The file given.
        path: PathBuf,
        /// Its container.
        format: String,
    },
    /// No config was given and the artifact records none.
    #[error("{path}: no --config or --preset given and no '{CONFIG_METADATA_KEY}' metadata in the weights", path = esc(.path))]
    NotRecorded {
        /// The artifact.
        path: PathBuf,
    },
    /// The recorded config was asked for while importing a source, which records none.
    #[error("choose a target: --preset NAME, --config C.json or --flavor FLAVOR")]
    NoTarget,
    /// No target was given and no preset of the family's flavour has the source's dimensions.
    #[error(
        "no preset fits this {family} source ({dims}); the {flavor} presets are: {candidates}. \
         Take the source's own dimensions with --flavor {flavor}, or choose --preset NAME or --config C.json", family = esc(.family), dims = esc(.dims), candidates = esc(.candidates)
    )]
    NoPresetFits {
        /// The source family.
        family: String,
        /// The source's dimensions, in words.
        dims: String,
        /// The flavour whose presets were considered.
        flavor: String,
        /// Those presets with their dimensions (`none` when the flavour has none).
        candidates: String,
    },
    /// No target was given and several presets of the family's flavour fit the source.
    #[error("several presets fit this {family} source ({dims}): {candidates}; choose one with --preset NAME", family = esc(.family), dims = esc(.dims), candidates = esc(.candidates))]
    AmbiguousPreset {
        /// The source family.
        family: String,
        /// The source's dimensions, in words.
        dims: String,
        /// The presets that fit, with their dimensions.
        candidates: String,
    },
}

impl TargetError {
    /// Whether the error is the command's fault rather than a file's: a target that must be
    /// named (none given, none fits, several fit), a flavour asked for where no source gives
    /// its dimensions, or a `--config` file whose config is refused. The command line reports
    /// these as usage errors.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TargetError::UnknownDims { .. }
                | TargetError::ConfigFile { .. }
                | TargetError::NoTarget
                | TargetError::NoPresetFits { .. }
                | TargetError::AmbiguousPreset { .. }
        )
    }
}

/// Open the artifact `run`, `verify` and `export` are given, refusing what is not one: a
/// source checkpoint (its family detected: import it first) or an artifact in another
/// container than safetensors. An unreadable file is named once.
pub fn open_artifact(path: &Path) -> Result<crate::formats::Checkpoint, TargetError> {
    let ck = crate::formats::open(path).map_err(|e| match e {
        FormatError::Io { path, source } => TargetError::Input { path, reason: source.to_string() },
        other => other.into(),
    })?;
    let (wrapper, sd) = ck.state_dict();
    let meta = crate::families::detect::checkpoint_meta(&ck, wrapper);
    if crate::families::detect::comer_artifact(&sd, &meta).is_none() {
        let det = crate::families::detect::detect(&sd, &meta);
        if let Some(f) = det.family() {
            return Err(TargetError::SourceNotArtifact {
                path: path.to_path_buf(),
                family: f.name().into(),
                format: ck.format.name().into(),
            });
        }
    } else if ck.format != crate::formats::Format::Safetensors {
        return Err(TargetError::NotSafetensors { path: path.to_path_buf(), format: ck.format.name().into() });
    }
    Ok(ck)
}

/// Resolve `spec` against `basis`: a preset by name, a config file, a config in hand, a
/// flavour with the source's dimensions (an artifact shows none), or the artifact's
/// recorded config (a source records none).
pub fn resolve(spec: &TargetSpec, basis: Basis<'_>) -> Result<ComerConfig, TargetError> {
    Ok(match spec {
        TargetSpec::Preset(name) => presets::preset(name)?,
        TargetSpec::ConfigFile(path) => {
            let text = read_config_file(path)?;
            ComerConfig::from_case_json(&text).map_err(|error| TargetError::ConfigFile { path: path.clone(), error })?
        }
        TargetSpec::Config(c) => {
            c.validate()?;
            (**c).clone()
        }
        TargetSpec::Flavor(f, img_size) => match basis {
            Basis::Source(source) => from_source(*f, source, *img_size)?,
            Basis::Artifact(_) => return Err(TargetError::UnknownDims { flavor: f.name().into() }),
        },
        TargetSpec::Recorded | TargetSpec::Auto => match basis {
            Basis::Artifact(path) => {
                let ck = open_artifact(path)?;
                match ck.metadata.get(CONFIG_METADATA_KEY) {
                    Some(json) => ComerConfig::from_case_json(json)
                        .map_err(|error| TargetError::Recorded { path: path.to_path_buf(), error })?,
                    None => return Err(TargetError::NotRecorded { path: path.to_path_buf() }),
                }
            }
            Basis::Source(_) => return Err(TargetError::NoTarget),
        },
    })
}

/// The most a `--config` file may hold: a `case.json` is a few kB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of a `--config` file, read without hanging and without reading more than
/// [`MAX_CONFIG_BYTES`]: the file is opened non-blocking (a FIFO nobody writes to reads as
/// empty instead of blocking the open; process substitution, `--config <(…)`, still works)
/// and read through a bounded reader (`/dev/zero` stops at the bound). Too large or not
/// UTF-8 is a refused config ([`TargetError::ConfigFile`]); unreadable is
/// [`TargetError::Input`].
fn read_config_file(path: &Path) -> Result<String, TargetError> {
    use std::io::Read;
    let input = |e: std::io::Error| TargetError::Input { path: path.to_path_buf(), reason: e.to_string() };
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = opts.open(path).map_err(input)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // Blocking reads again, so a pipe's writer is waited for; a FIFO without one reads
        // end-of-file at once.
        // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns; no memory is passed.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(input)?;
    let refused = |m: String| TargetError::ConfigFile { path: path.to_path_buf(), error: ConfigError::Json(m) };
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(refused(format!("larger than {MAX_CONFIG_BYTES} bytes: not a config (a case.json is a few kB)")));
    }
    String::from_utf8(bytes).map_err(|e| refused(format!("not UTF-8 text ({e})")))
}

/// A config of flavour `f` with the source's dimensions (its head count as the source's
/// detector read or assumed it) and upstream's defaults otherwise: the interactions split
/// the blocks into four even stretches, the pretrain size is the source's grid times 16.
/// `vit-comer-det`/`-seg` attend globally (their absolute position table is resized at run
/// time, so any input size runs); their image size is `img_size` (default: the source's
/// pretrain size), and their pretrain size the same (the table is resized to that grid at
/// import: upstream's `_get_pos_embed` reshapes it to the pretrain grid). `beit-comer` attends in windows like the Co-DETR preset (`beit-comer-l-codetr`:
/// 14x14 windows, the last block of each interaction stretch 56x56 for 896-pixel inputs,
/// `img_size` 224): every block in windows of the source's own grid (its relative-position
/// tables unresized), and when `img_size` asks for a larger grid, the last block of each
/// stretch of two or more blocks in windows of that grid; its `img_size` stays the pretrain
/// size, as the preset's. Windows pad, so the artifact runs at any input size; a global BEiT
/// block would run at one size only ([`one_size`]).
pub fn from_source(f: Flavor, s: &SourceConfig, img_size: Option<usize>) -> Result<ComerConfig, ConfigError> {
    let (embed, depth) = (s.embed_dim, s.depth.max(1));
    // `depth` sizes the lists built below: a crafted source claiming a billion blocks is
    // refused before they are allocated (validate() checks every other field).
    crate::model::config::in_range("depth", depth, &crate::model::limits::DEPTH)?;
    let grid = s.pretrain_grid.map(|g| g.0).unwrap_or(14);
    let img = img_size.unwrap_or(grid * 16);
    let per = depth.div_ceil(4).max(1);
    let idx: Vec<[usize; 2]> =
        (0..4).map(|i| [(i * per).min(depth - 1), ((i + 1) * per - 1).min(depth - 1)]).collect();
    let mut kw = serde_json::json!({
        "embed_dim": embed, "depth": depth, "num_heads": s.num_heads,
        "mlp_ratio": s.mlp_hidden as f64 / embed.max(1) as f64,
        "patch_size": 16, "img_size": if f == Flavor::Beit { grid * 16 } else { img },
        // upstream's `_get_pos_embed` reshapes the table to the pretrain grid: the two agree
        "pretrain_size": if f == Flavor::Beit { grid * 16 } else { img },
        "interaction_indexes": idx, "deform_num_heads": s.num_heads,
        "window_attn": vec![false; depth],
        "window_size": vec![serde_json::Value::Null; depth],
    });
    if f == Flavor::Beit {
        let wide = img / 16;
        let windows: Vec<usize> = (0..depth)
            .map(|b| {
                let last_of_stretch = idx.iter().any(|[lo, hi]| b == *hi && hi > lo);
                if last_of_stretch && wide > grid { wide } else { grid }
            })
            .collect();
        kw["qkv_bias"] = serde_json::json!(true);
        kw["window_attn"] = serde_json::json!(vec![true; depth]);
        kw["window_size"] = serde_json::json!(windows);
        kw["init_values"] = serde_json::json!(1e-6);
    }
    let map = kw.as_object().cloned().unwrap_or_default();
    ComerConfig::from_kwargs(f, &map)
}

/// Blocks grouped by attention window, in words: `blocks 0-2, 4-6 in 14x14 windows`.
fn window_groups(cfg: &ComerConfig) -> Vec<(Option<usize>, Vec<usize>)> {
    let mut groups: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
    for b in 0..cfg.depth {
        let w = if cfg.window_attn.get(b).copied().unwrap_or(false) { cfg.window_size.get(b).copied().flatten() } else { None };
        match groups.iter_mut().find(|(g, _)| *g == w) {
            Some((_, v)) => v.push(b),
            None => groups.push((w, vec![b])),
        }
    }
    groups
}

/// How the target's blocks attend and what input sizes it therefore runs at, in one line
/// (`import` states it for `--flavor` targets).
pub fn attention_layout(cfg: &ComerConfig) -> String {
    let groups = window_groups(cfg);
    let parts: Vec<String> = groups
        .iter()
        .map(|(w, blocks)| match w {
            Some(w) => format!("blocks {blocks:?} in {w}x{w} windows"),
            None => format!("blocks {blocks:?} attend globally"),
        })
        .collect();
    let runs = match one_size(cfg) {
        Some(_) => format!("it runs at {0}x{0} inputs only", cfg.img_size),
        None => "it runs at any input size (multiples of 32)".into(),
    };
    format!("{}; {runs}", parts.join(", "))
}

/// Why an artifact of `cfg` can run at one input size only, or `None`: a `beit-comer` block
/// that attends globally uses a relative-position table of a fixed `w x w` grid (upstream's
/// BEiT computes its bias for that grid), so the token grid must be `w x w`.
pub fn one_size(cfg: &ComerConfig) -> Option<String> {
    if cfg.flavor != Flavor::Beit {
        return None;
    }
    let global: Vec<usize> = (0..cfg.depth).filter(|b| !cfg.window_attn.get(*b).copied().unwrap_or(false)).collect();
    let first = *global.first()?;
    let w = cfg.window_size.get(first).copied().flatten().unwrap_or(14);
    let px = w * cfg.patch_size;
    Some(format!(
        "beit-comer blocks {global:?} attend globally with relative-position tables of a {w}x{w} grid: the artifact \
         runs at {px}x{px} inputs only (a global block's table must cover the whole token grid). For other sizes \
         use windowed attention: --flavor beit-comer (windows like the beit-comer-l-codetr preset) or a --config \
         with window_attn true"
    ))
}

/// The preset [`pick_preset`] chose, and why.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The preset's name (`--preset` takes it).
    pub name: &'static str,
    /// Its config.
    pub config: ComerConfig,
    /// Which preset and why, in one line (printed by `import` and kept in its report).
    pub reason: String,
}

/// The source's dimensions in words, as [`check_dims`] compares them.
fn source_dims(s: &SourceConfig) -> String {
    let assumed = if s.assumed.iter().any(|a| a == "num_heads") { " (assumed)" } else { "" };
    format!("embed {}, depth {}, {} heads{assumed}, mlp {}", s.embed_dim, s.depth, s.num_heads, s.mlp_hidden)
}

/// A preset's dimensions in words.
fn preset_dims(name: &str, c: &ComerConfig) -> String {
    let mlp = (c.embed_dim as f64 * c.mlp_ratio) as usize;
    format!("{name} (embed {}, depth {}, {} heads, mlp {mlp})", c.embed_dim, c.depth, c.num_heads)
}

/// The target `import` takes when none is given: among the presets of the flavour the family
/// fits ([`Family::preset_flavor`]: BEiT → `beit-comer`, DINOv2 → the `vit-comer-det` DINOv2
/// presets, the others → the `vit-comer-seg` presets), the one whose dimensions (embed dim,
/// depth, heads unless assumed, MLP width: what [`check_dims`] compares) are the source's.
/// None or several → an error listing the candidates with their dimensions.
pub fn pick_preset(family: &dyn Family, s: &SourceConfig) -> Result<Picked, TargetError> {
    let flavor = family.preset_flavor();
    let mut candidates = Vec::new();
    for p in presets::PRESETS {
        let cfg = presets::preset(p.name)?;
        if cfg.flavor == flavor {
            candidates.push((p.name, cfg));
        }
    }
    pick_among(family.name(), flavor, s, candidates)
}

/// [`pick_preset`] over a given list of a flavour's presets.
fn pick_among(
    family: &str,
    flavor: Flavor,
    s: &SourceConfig,
    candidates: Vec<(&'static str, ComerConfig)>,
) -> Result<Picked, TargetError> {
    let list = |c: &[(&'static str, ComerConfig)]| {
        let v: Vec<String> = c.iter().map(|(n, c)| preset_dims(n, c)).collect();
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    };
    let fits: Vec<_> = candidates.iter().filter(|(_, c)| check_dims(s, c).is_ok()).cloned().collect();
    match fits.as_slice() {
        [(name, config)] => {
            let (name, config) = (*name, config.clone());
            let reason = format!(
                "chose preset {name} (no --preset, --config or --flavor given): {family} sources go into the {} \
                 presets, and this is the one with the source's dimensions ({})",
                flavor.name(),
                source_dims(s),
            );
            Ok(Picked { name, config, reason })
        }
        [] => Err(TargetError::NoPresetFits {
            family: family.into(),
            dims: source_dims(s),
            flavor: flavor.name().into(),
            candidates: list(&candidates),
        }),
        _ => Err(TargetError::AmbiguousPreset { family: family.into(), dims: source_dims(s), candidates: list(&fits) }),
    }
}

/// Refuse a source whose dimensions differ from the target's.
pub fn check_dims(s: &SourceConfig, c: &ComerConfig) -> Result<(), ImportError> {
    let mlp = (c.embed_dim as f64 * c.mlp_ratio) as usize;
    let checks = [
        ("embed dim", s.embed_dim, c.embed_dim),
        ("depth", s.depth, c.depth),
        ("number of heads", s.num_heads, c.num_heads),
        ("mlp hidden size", s.mlp_hidden, mlp),
    ];
    for (what, src, tgt) in checks {
        // An assumed head count is the family's convention, not a fact about the source:
        // the target's own count stands.
        if what == "number of heads" && s.assumed.iter().any(|a| a == "num_heads") {
            continue;
        }
        if src != tgt {
            return Err(ImportError::DimensionMismatch { what: what.into(), source_value: src, target_value: tgt });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! One test per [`TargetError`] variant, matching the variant, not the message; and the
    //! precedence of the specs.
    use super::*;

    const TINY: &str = include_str!("../fixtures/forward/det_tiny/case.json");

    /// The DeiT-tiny fixture's own config (embed 48, depth 4, 3 heads, a 4x4 grid).
    fn dims() -> SourceConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sources/deit/deit_tiny.pth");
        let ck = crate::formats::open(&p).expect("deit");
        crate::families::detect::detect_checkpoint(&ck).config.expect("config")
    }

    #[test]
    fn input() {
        let spec = TargetSpec::ConfigFile("/nonexistent/c.json".into());
        let e = resolve(&spec, Basis::Source(&dims())).expect_err("missing file");
        assert!(matches!(e, TargetError::Input { .. }), "{e}");
    }

    #[test]
    fn config() {
        let e = resolve(&TargetSpec::Preset("nope".into()), Basis::Source(&dims())).expect_err("unknown preset");
        assert!(matches!(e, TargetError::Config(ConfigError::UnknownPreset { .. })), "{e}");
    }

    #[test]
    fn format() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/forward/det_tiny/case.json");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("not a checkpoint");
        assert!(matches!(e, TargetError::Format(_)), "{e}");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(Path::new("/nonexistent/a.safetensors")))
            .expect_err("missing artifact");
        assert!(matches!(e, TargetError::Input { .. }), "{e}");
    }

    #[test]
    fn config_file() {
        // A refused --config file is a usage error naming the file; an over-long one is
        // refused after reading at most MAX_CONFIG_BYTES + 1 bytes.
        let d = std::env::temp_dir().join(format!("comer-port-target-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        let p = d.join("bad.json");
        std::fs::write(&p, TINY.replace("\"n_points\": 4", "\"n_points\": 0")).expect("write");
        let e = resolve(&TargetSpec::ConfigFile(p.clone()), Basis::Source(&dims())).expect_err("n_points 0");
        assert!(matches!(e, TargetError::ConfigFile { error: ConfigError::OutOfRange { .. }, .. }), "{e}");
        assert!(e.is_usage() && e.to_string().contains("bad.json") && e.to_string().contains("n_points = 0"), "{e}");
        let e = resolve(&TargetSpec::ConfigFile("/dev/zero".into()), Basis::Source(&dims())).expect_err("endless");
        assert!(matches!(e, TargetError::ConfigFile { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn recorded() {
        // An artifact whose recorded config is refused: bad input naming the artifact.
        let d = std::env::temp_dir().join(format!("comer-port-target-rec-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        let p = d.join("a.safetensors");
        let cfg = TINY.replace("\"depth\": 4", "\"depth\": 1000000000");
        let meta = std::collections::HashMap::from([(CONFIG_METADATA_KEY.to_string(), cfg)]);
        let t: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        let bytes = safetensors::serialize(t, Some(meta)).expect("header");
        std::fs::write(&p, bytes).expect("write");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("depth 1e9");
        assert!(matches!(e, TargetError::Recorded { error: ConfigError::OutOfRange { .. }, .. }), "{e}");
        assert!(!e.is_usage() && e.to_string().contains("a.safetensors"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_dims() {
        let e = resolve(&TargetSpec::Flavor(Flavor::Det, None), Basis::Artifact(Path::new("a"))).expect_err("no dims");
        assert!(matches!(e, TargetError::UnknownDims { .. }), "{e}");
    }

    #[test]
    fn not_recorded() {
        // Upstream's own weights: an artifact (level_embed), but it records no config.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/forward/det_tiny/weights.safetensors");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("no metadata");
        assert!(matches!(e, TargetError::NotRecorded { .. }), "{e}");
    }

    #[test]
    fn source_not_artifact() {
        // A source checkpoint read as an artifact: its family is named, and the import.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sources/deit/deit_tiny.pth");
        let e = resolve(&TargetSpec::Recorded, Basis::Artifact(&p)).expect_err("a source");
        assert!(matches!(e, TargetError::SourceNotArtifact { .. }), "{e}");
        assert!(e.to_string().contains("(deit, torch-zip)") && e.to_string().contains("comer-port import"), "{e}");
    }

    #[test]
    fn not_safetensors() {
        // An artifact written as .pth (upstream's names under state_dict): read by PyTorch.
        use crate::export::safetensors::OutTensor;
        let dir = std::env::temp_dir().join(format!("comer-port-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("a.pth");
        let outs = vec![OutTensor { name: "level_embed".into(), shape: vec![3, 4], dtype: crate::formats::DType::F32 }];
        crate::export::pth::write(&p, true, &outs, &[], |_| Ok::<_, crate::export::atomic::WriteError>(vec![0u8; 48]))
            .expect("write");
        let e = open_artifact(&p).expect_err("a .pth artifact");
        assert!(matches!(e, TargetError::NotSafetensors { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_target() {
        let e = resolve(&TargetSpec::Recorded, Basis::Source(&dims())).expect_err("nothing recorded");
        assert!(matches!(e, TargetError::NoTarget), "{e}");
    }

    #[test]
    fn no_preset_fits() {
        // The tiny DeiT (embed 48) fits none of the real presets: the seg ones are listed.
        let e = pick_preset(crate::families::by_name("deit").expect("deit"), &dims()).expect_err("none fits");
        assert!(matches!(e, TargetError::NoPresetFits { .. }), "{e}");
        assert!(e.is_usage());
        assert!(e.to_string().contains("vit-comer-s-seg (embed 384, depth 12"), "{e}");
    }

    #[test]
    fn ambiguous_preset() {
        let tiny = ComerConfig::from_case_json(TINY).expect("tiny");
        let two = vec![("a", tiny.clone()), ("b", tiny)];
        let e = pick_among("deit", Flavor::Det, &dims(), two).expect_err("two fit");
        assert!(matches!(e, TargetError::AmbiguousPreset { .. }), "{e}");
        assert!(e.is_usage() && e.to_string().contains("a (embed 48") && e.to_string().contains("b (embed 48"), "{e}");
    }

    #[test]
    fn picks_by_family_flavour_and_dimensions() {
        let tiny = ComerConfig::from_case_json(TINY).expect("tiny");
        let p = pick_among("deit", Flavor::Det, &dims(), vec![("tiny", tiny.clone())]).expect("fits");
        assert_eq!((p.name, p.config), ("tiny", tiny));
        assert!(p.reason.starts_with("chose preset tiny"), "{}", p.reason);
        // The real presets: a DeiT-S-shaped source goes into the seg preset of its size, the
        // same dimensions from DINOv2 into the det-dinov2 one.
        let small = SourceConfig { embed_dim: 384, depth: 12, num_heads: 6, mlp_hidden: 1536, ..dims() };
        let f = |n: &str| crate::families::by_name(n).expect("family");
        assert_eq!(pick_preset(f("deit"), &small).expect("deit").name, "vit-comer-s-seg");
        assert_eq!(pick_preset(f("dinov2"), &small).expect("dinov2").name, "vit-comer-s-det-dinov2");
        let large = SourceConfig { embed_dim: 1024, depth: 24, num_heads: 16, mlp_hidden: 4096, ..dims() };
        assert_eq!(pick_preset(f("beit"), &large).expect("beit").name, "beit-comer-l-codetr");
    }

    /// `--flavor beit-comer` attends in windows (any input size); with `--img-size` the last
    /// block of each stretch of two or more gets the wide window, like the Co-DETR preset; a
    /// global BEiT block runs at one size and says so.
    #[test]
    fn beit_from_a_flavour_attends_in_windows() {
        let eight = SourceConfig { depth: 8, ..dims() };
        let c = from_source(Flavor::Beit, &eight, None).expect("windowed");
        assert_eq!(c.window_attn, vec![true; 8]);
        assert_eq!(c.window_size, vec![Some(4); 8]);
        assert!(one_size(&c).is_none(), "windows pad: any size runs");
        let wide = from_source(Flavor::Beit, &eight, Some(256)).expect("wide");
        let w: Vec<Option<usize>> = [4, 16, 4, 16, 4, 16, 4, 16].iter().map(|w| Some(*w)).collect();
        assert_eq!((wide.window_size, wide.img_size, wide.pretrain_size), (w, 64, 64), "img_size as the Co-DETR preset's");
        assert!(attention_layout(&c).contains("blocks [0, 1, 2, 3, 4, 5, 6, 7] in 4x4 windows"), "{}", attention_layout(&c));
        let mut global = c.clone();
        global.window_attn[3] = false;
        let why = one_size(&global).expect("one size");
        assert!(why.contains("blocks [3]") && why.contains("64x64 inputs only"), "{why}");
        assert!(attention_layout(&global).contains("runs at 64x64 inputs only"));
        let det = from_source(Flavor::Det, &eight, Some(128)).expect("det");
        assert!(one_size(&det).is_none() && det.img_size == 128 && det.pretrain_size == 128);
    }

    #[test]
    fn flags_and_flavours() {
        assert!(TargetSpec::from_flags(None, None).is_none());
        let c = Path::new("c.json");
        assert!(matches!(TargetSpec::from_flags(Some(c), None), Some(TargetSpec::ConfigFile(_))));
        assert!(matches!(TargetSpec::from_flags(None, Some("p")), Some(TargetSpec::Preset(_))));
        let tiny = ComerConfig::from_case_json(TINY).expect("tiny");
        let got = resolve(&TargetSpec::Config(Box::new(tiny.clone())), Basis::Source(&dims())).expect("in hand");
        assert_eq!(got, tiny);
        let beit = resolve(&TargetSpec::Flavor(Flavor::Beit, None), Basis::Source(&dims())).expect("beit");
        assert_eq!((beit.flavor, beit.embed_dim, beit.depth, beit.img_size), (Flavor::Beit, 48, 4, 64));
    }
}
