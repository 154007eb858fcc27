//! `import/`: a source checkpoint in, a verified ViT-CoMer artifact out, as four plain steps
//! above the stages: [`plan`] (detect the family, resolve the target, map every target key),
//! [`write`] (stream the tensors into a temporary safetensors file), [`verify`] (run
//! `verify`'s checks on that file before anyone can see it) and [`commit`] (record the source
//! hash and the verdict, publish the safetensors, the `.pth`, the config and the report).
//! [`run`] chains them, hashing the source on a second thread meanwhile.
//!
//! Mirrors what a user does today in Python with upstream's code (`torch.load`, build
//! `ViTCoMer`/`BEiTComer2`, the Co-DETR branch's checkpoint loader, `load_state_dict`,
//! `save_file`) without holding two copies: renamed tensors go from the mapped source
//! straight to the file, and each source tensor's pages are released once written.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::export::safetensors::{OutTensor, Pending};
use crate::families::detect::{self, SourceConfig};
use crate::families::error::ImportError;
use crate::families::mapping::{self, Origin, Plan, PlanOptions, Values};
use crate::families::{Family, Keys};
use crate::formats::{Checkpoint, DType, TensorView};
use crate::meta::{ArtifactMeta, SOURCE_SHA_KEY, Transforms, VERIFY_KEY};
use crate::model::ComerConfig;
use crate::progress::{Progress, Stage, Unit};
use crate::target::{self, TargetSpec};
use crate::text::Escaped;
use crate::verify::{Check, Report, policy};

/// Errors from every stage, carried through `import`.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source could not be mapped.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The source could not be read.
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    /// The target config is malformed or unknown.
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    /// An output could not be written.
    #[error(transparent)]
    Write(#[from] crate::export::atomic::WriteError),
    /// The target config could not be resolved.
    #[error(transparent)]
    Target(#[from] target::TargetError),
    /// Two outputs are one file, or an output is the source (or inside its folder) or the
    /// `--config` file.
    #[error(transparent)]
    Collision(#[from] crate::export::outputs::CollisionError),
}

/// Everything `import` needs besides the source.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The source family, when the user names it (else detected).
    pub family: Option<String>,
    /// The target.
    pub target: TargetSpec,
    /// Seed of the fresh parameters.
    pub seed: u64,
    /// Float dtype of the artifact.
    pub dtype: DType,
    /// How sources are transformed.
    pub plan: PlanOptions,
    /// Refuse NaN/Inf in the source instead of warning.
    pub strict_finite: bool,
    /// Omit derivable int64 buffers.
    pub no_buffers: bool,
    /// The safetensors artifact.
    pub out: Option<PathBuf>,
    /// The `.pth` artifact.
    pub pth: Option<PathBuf>,
    /// A prefix of every key of the `.pth` (`backbone.`: the detector's names that mmdet's
    /// `load_from` expects); the safetensors artifact keeps upstream's backbone names.
    pub key_prefix: Option<String>,
    /// The report (`.json`, and `.txt` beside it).
    pub report: Option<PathBuf>,
    /// Write the config beside the first artifact, named after it (`X.config.json`).
    pub write_config: bool,
    /// Replace existing outputs.
    pub force: bool,
    /// Where the stages report their progress (read, write, each verification check).
    pub progress: Progress,
    /// Verify the written safetensors artifact before it is renamed into place (round trip,
    /// mapping parity, backbone) and record the verdict in its `comer_port.verify` metadata.
    pub verify: bool,
    /// The source's MLP activation when the user states it (`--source-activation`): CLIP
    /// state dicts do not record QuickGELU. Overrides what the container names.
    pub source_activation: Option<detect::Activation>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            family: None,
            target: TargetSpec::Flavor(crate::model::Flavor::Det, None),
            seed: 0,
            dtype: DType::F32,
            plan: PlanOptions::default(),
            strict_finite: false,
            no_buffers: false,
            out: None,
            pth: None,
            key_prefix: None,
            report: None,
            write_config: true,
            force: false,
            progress: Progress::QUIET,
            verify: false,
            source_activation: None,
        }
    }
}

/// Seconds each import step took (`run` measures them; the report records them).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Times {
    /// Opening the source (the object tree; tensors stay mapped).
    pub read_s: f64,
    /// Step 1: detection, target, mapping plan.
    pub plan_s: f64,
    /// Step 2: streaming the safetensors artifact.
    pub write_s: f64,
    /// Step 3: verifying it.
    pub verify_s: f64,
    /// Step 4 up to the report: publishing, the `.pth`, the config.
    pub commit_s: f64,
    /// All of them.
    pub total_s: f64,
}

/// How the report opens: the source, the family and why, the target and why, the verdict,
/// every file written and the time of each step — what a reader looks for first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Overview {
    /// The source as given.
    pub source: String,
    /// Its container (`torch-zip`, `hf-folder`, …), and what it holds when that is not a
    /// plain state dict (a full-model pickle).
    pub format: String,
    /// The source family.
    pub family: String,
    /// Why that family: the detector's reason, or `--family` given.
    pub family_reason: String,
    /// The target: `preset NAME`, `config PATH`, `flavour NAME` (the source's dimensions).
    pub target: String,
    /// The target flavour.
    pub flavor: String,
    /// Why that target, and what it can run at.
    pub target_reason: String,
    /// The verification verdict (`policy::verdict`: passed, lossy, failed, nothing ran) with
    /// its counts and first failure, or `not run (WHY)`.
    pub verdict: String,
    /// Every file written, in order.
    pub outputs: Vec<String>,
    /// How long each step took.
    pub times: Times,
}

/// What an import did. Serialised as the report (`--report R.json`): the [`Overview`] first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    /// Source, family, target, verdict, outputs and times, each with its reason.
    pub summary: Overview,
    /// The source's file name.
    pub source: String,
    /// The source family.
    pub family: String,
    /// The target flavour.
    pub flavor: String,
    /// The source's config as its family's detector read it.
    pub source_config: SourceConfig,
    /// The target config (`case.json` form).
    pub config: serde_json::Value,
    /// Seed of the fresh parameters.
    pub seed: u64,
    /// Every target key's origin and every source key's fate.
    pub plan: Plan,
    /// Warnings (non-finite values, eps and activation notes).
    pub warnings: Vec<String>,
    /// What was transformed and dropped.
    pub transforms: Transforms,
    /// What the verification of the written artifact found (`None` when it did not run).
    pub verify: Option<Report>,
}

/// Step 0: open the source (a file or folder; `bytes` when it is bundled in memory).
pub fn open(source: &Path, bytes: Option<&[u8]>) -> Result<Checkpoint, PipelineError> {
    Ok(match bytes {
        Some(b) => crate::formats::open_bytes(source, b.to_vec())?,
        None => {
            // Stored records are CRC-checked as they are written ([`write`]), not in a pass of
            // their own: one read of the source's bytes instead of two.
            let limits = crate::formats::ReadLimits::from_env()
                .map_err(|reason| crate::formats::FormatError::unsupported(source, reason))?;
            crate::formats::open_with(source, &crate::formats::ReadLimits { defer_crc: true, ..limits })?
        }
    })
}

/// Check the deferred CRC-32 of every storage of `ck` not yet checked (the records no
/// output read), releasing their pages again.
fn check_remaining_crcs(ck: &Checkpoint) -> Result<(), PipelineError> {
    for (_, v) in ck.tensors() {
        v.check_storage(true)?;
    }
    Ok(())
}

/// Placeholder of the source hash in the header, filled by [`commit`].
const HASH_PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The verify metadata value written before verifying: [`policy::VERDICT_ROOM`] bytes,
/// replaced by [`policy::header_verdict`] once the checks ran.
fn verdict_placeholder() -> String {
    format!("pending{}", "~".repeat(policy::VERDICT_ROOM - "pending".len()))
}

/// Step 1's result: everything decided before the first byte is written.
pub struct ImportPlan<'ck> {
    ck: &'ck Checkpoint,
    /// The source family.
    pub family: &'static dyn Family,
    /// The source's own config.
    pub source_config: SourceConfig,
    /// The target config.
    pub config: ComerConfig,
    /// Every target key's origin, every source key's fate.
    pub plan: Plan,
    /// The metadata every artifact records (hash and verdict still placeholders).
    pub meta: ArtifactMeta,
    /// Notes for the user, in words.
    pub warnings: Vec<String>,
    /// Why the family is this one (the detector's reason, or `--family`).
    pub family_reason: String,
    /// The target in words (`preset NAME`, `config PATH`, `flavour NAME`).
    pub target: String,
    /// Why that target, and what input sizes it runs at.
    pub target_reason: String,
    sd: Vec<(String, &'ck TensorView)>,
    outs: Vec<OutTensor>,
    idx: Vec<usize>,
}

/// The family, given or detected from the keys (the detector `inspect` and `verify` use),
/// and why. Keys a family recognised but cannot hold (a SwiGLU MLP) are refused as such.
fn pick_family(
    given: Option<&str>,
    sd: &[(String, &TensorView)],
    meta: &detect::Meta,
) -> Result<(&'static dyn Family, String), ImportError> {
    if let Some(f) = given {
        return Ok((crate::families::by_name(f)?, "--family given".into()));
    }
    let det = detect::detect(sd, meta);
    match (det.family(), det.refused) {
        (Some(f), _) => Ok((f, det.reason)),
        (None, Some(family)) => Err(ImportError::CannotHold { family: family.into(), reason: det.reason }),
        (None, None) => Err(ImportError::UnknownFamily { reason: det.reason }),
    }
}

/// The target in words and why it was taken.
fn describe_target(spec: &TargetSpec, cfg: &ComerConfig, picked: Option<&target::Picked>) -> (String, String) {
    match (spec, picked) {
        (_, Some(p)) => (format!("preset {}", p.name), p.reason.clone()),
        (TargetSpec::Preset(n), _) => (format!("preset {n}"), "--preset given".into()),
        (TargetSpec::ConfigFile(path), _) => (format!("config {}", path.display()), "--config given".into()),
        (TargetSpec::Config(_), _) => ("config given by the caller".into(), "the caller's config".into()),
        (TargetSpec::Flavor(f, _), _) => (
            format!("flavour {}", f.name()),
            format!("--flavor {}: the source's own dimensions and upstream's defaults; {}", f.name(), target::attention_layout(cfg)),
        ),
        (TargetSpec::Recorded | TargetSpec::Auto, None) => ("recorded config".into(), String::new()),
    }
}

/// Map a state dict (wrapper stripped) into `target`: the family's config of the source,
/// the resolved target, and the plan. Pure: no file is read or written.
pub fn plan_state_dict(
    family: &dyn Family,
    sd: &[(String, &TensorView)],
    meta: &detect::Meta,
    target: &TargetSpec,
    opts: &PlanOptions,
) -> Result<(SourceConfig, ComerConfig, Plan), PipelineError> {
    let m = mapping::Mapping::parse(family.mapping())?;
    let source = family
        .config(&Keys::new(sd), meta)
        .map_err(|reason| ImportError::NotThisFamily { family: family.name().into(), reason })?;
    let cfg = match target {
        TargetSpec::Auto => target::pick_preset(family, &source)?.config,
        t => target::resolve(t, target::Basis::Source(&source))?,
    };
    target::check_dims(&source, &cfg)?;
    let layout = crate::model::layout::target_layout(&cfg);
    let plan = mapping::plan(&m, &layout, sd, opts)?;
    Ok((source, cfg, plan))
}

/// Step 1: decide everything — the outputs (each its own file, none an input:
/// [`check_paths`]), the family, the source's config, the target, every target key's origin,
/// the metadata — and refuse before anything is written.
pub fn plan<'ck>(ck: &'ck Checkpoint, source: &Path, opts: &ImportOptions) -> Result<ImportPlan<'ck>, PipelineError> {
    check_paths(source, opts)?;
    let (wrapper, sd) = ck.state_dict();
    let det_meta = detect::checkpoint_meta(ck, wrapper);
    if let Some(why) = detect::comer_artifact(&sd, &det_meta) {
        return Err(ImportError::AlreadyArtifact { path: source.to_path_buf(), why }.into());
    }
    let (family, family_reason) = pick_family(opts.family.as_deref(), &sd, &det_meta)?;
    let sd = crate::families::mapping_for(family.name())?.normalise_keys(sd);
    let (source_config, cfg, plan) = plan_state_dict(family, &sd, &det_meta, &opts.target, &opts.plan)?;
    let mut warnings = Vec::new();
    let picked = match opts.target {
        TargetSpec::Auto => Some(target::pick_preset(family, &source_config)?),
        _ => None,
    };
    if let Some(p) = &picked {
        warnings.push(p.reason.clone());
    }
    let (target_name, target_reason) = describe_target(&opts.target, &cfg, picked.as_ref());
    if let Some(why) = target::one_size(&cfg) {
        warnings.push(why);
    }
    if let Some(eps) = ck.metadata.get("layer_norm_eps").and_then(|v| v.parse::<f64>().ok())
        && (eps - 1e-6).abs() > 1e-12
    {
        warnings.push(format!(
            "the source's LayerNorm eps is {eps}; upstream's blocks use 1e-6 (a tiny, documented numerical difference)"
        ));
    }
    let activation_assumed = source_config.assumed.iter().any(|a| a == "activation");
    if activation_assumed {
        warnings.push(format!(
            "{}: the checkpoint does not record its MLP activation: assumed {:?} (for CLIP / open_clip sources \
             --source-activation quick-gelu|gelu states it; the parity figures follow it)",
            family.name(),
            source_config.activation
        ));
    } else if let Some(from) = det_meta.get(detect::META_ACTIVATION_FROM) {
        warnings.push(format!("{}: the MLP activation is {:?}, named by {from}", family.name(), source_config.activation));
    }
    if let crate::families::Fit::Inexpressible(_) | crate::families::Fit::Approximation { .. } = family.fit(&source_config)
        && source_config.activation != detect::Activation::Gelu
    {
        warnings.push(format!(
            "{}: the source's activation is {:?}{}, upstream's blocks use exact GELU, so the ViT branch deviates",
            family.name(),
            source_config.activation,
            if activation_assumed {
                " (not recorded in the checkpoint: assumed)"
            } else {
                ""
            }
        ));
    }
    // Every destination is checked before the first byte is written: an import that would
    // stop at its third file must not leave the first two behind.
    if !opts.force {
        for dest in output_paths(opts) {
            if dest.exists() {
                return Err(crate::export::atomic::WriteError::Exists(dest).into());
            }
        }
    }
    let transforms = Transforms {
        relpos_resize: if opts.plan.relpos_geometric { "geometric" } else { "bicubic" }.into(),
        patch_resize: if opts.plan.patch_pinv { "pinv" } else { "bilinear" }.into(),
        pos_resize: "bicubic".into(),
        lossy: opts.plan.lossy,
        used: plan
            .targets
            .iter()
            .filter_map(|p| match &p.origin {
                Origin::Source { transform, .. } => Some(transform.name().to_string()),
                _ => None,
            })
            .collect(),
        decisions: plan.decisions.clone(),
    };
    let will_verify = opts.verify && opts.out.is_some();
    let meta = ArtifactMeta {
        version: crate::VERSION.into(),
        source: source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        source_sha256: HASH_PLACEHOLDER.into(),
        family: family.name().into(),
        flavor: cfg.flavor.name().into(),
        config: cfg.to_case_json(),
        seed: opts.seed,
        transforms,
        verify: if will_verify {
            verdict_placeholder()
        } else {
            policy::not_run_verdict(if opts.verify { "no safetensors output" } else { "--no-verify" })
        },
    };
    let (outs, idx) = outputs(&plan, opts.dtype, opts.no_buffers);
    Ok(ImportPlan {
        ck,
        family,
        source_config,
        config: cfg,
        plan,
        meta,
        warnings,
        family_reason,
        target: target_name,
        target_reason,
        sd,
        outs,
        idx,
    })
}

/// Every file an import with `opts` writes, with its role, in the order they are written.
pub fn output_roles(opts: &ImportOptions) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    if let Some(o) = &opts.out {
        v.push(("the -o output".to_string(), o.clone()));
    }
    if let Some(p) = &opts.pth {
        v.push(("the --pth output".to_string(), p.clone()));
    }
    if let Some(c) = config_path(opts) {
        v.push(("the config written beside the artifact".to_string(), c));
    }
    if let Some(r) = &opts.report {
        v.push(("the --report output".to_string(), r.clone()));
        v.push(("the text summary of --report".to_string(), r.with_extension("txt")));
    }
    v
}

/// Every file an import with `opts` writes.
pub fn output_paths(opts: &ImportOptions) -> Vec<PathBuf> {
    output_roles(opts).into_iter().map(|(_, p)| p).collect()
}

/// Refuse outputs that are one file, or that are the source, inside a source folder (a
/// Hugging Face model folder) or the `--config` file — with or without `--force`
/// (`export::outputs`): a usage error before anything is written.
pub fn check_paths(source: &Path, opts: &ImportOptions) -> Result<(), PipelineError> {
    let mut inputs = vec![("the source".to_string(), source.to_path_buf())];
    if let TargetSpec::ConfigFile(c) = &opts.target {
        inputs.push(("the --config file".to_string(), c.clone()));
    }
    Ok(crate::export::outputs::check(&output_roles(opts), &inputs)?)
}

/// The config beside the first artifact, named after it (`X.safetensors` → `X.config.json`),
/// when written.
pub fn config_path(opts: &ImportOptions) -> Option<PathBuf> {
    let first = opts.out.as_ref().or(opts.pth.as_ref()).filter(|_| opts.write_config)?;
    Some(first.with_extension("config.json"))
}

/// The output tensors of a plan (buffers dropped with `no_buffers`), with plan indices.
pub fn outputs(plan: &Plan, dtype: DType, no_buffers: bool) -> (Vec<OutTensor>, Vec<usize>) {
    let mut out = Vec::new();
    let mut idx = Vec::new();
    for (i, p) in plan.targets.iter().enumerate() {
        if no_buffers && p.entry.dtype == DType::I64 {
            continue;
        }
        let dt = if p.entry.dtype == DType::I64 { DType::I64 } else { dtype };
        out.push(OutTensor { name: p.entry.name.clone(), shape: p.entry.shape.clone(), dtype: dt });
        idx.push(i);
    }
    (out, idx)
}

/// Encode produced values in the output dtype; f16 overflow is an error naming the key.
pub fn encode(name: &str, v: &Values, dtype: DType) -> Result<Vec<u8>, ImportError> {
    match v {
        Values::I64(x) => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        Values::F32(x) => match dtype {
            DType::F16 => {
                let mut out = Vec::with_capacity(x.len() * 2);
                for &f in x {
                    let h = half::f16::from_f32(f);
                    if f.is_finite() && !h.is_finite() {
                        return Err(ImportError::Overflow { target: name.into(), value: f, dtype: "f16".into() });
                    }
                    out.extend_from_slice(&h.to_le_bytes());
                }
                Ok(out)
            }
            DType::BF16 => Ok(x.iter().flat_map(|&f| half::bf16::from_f32(f).to_le_bytes()).collect()),
            _ => Ok(x.iter().flat_map(|f| f.to_le_bytes()).collect()),
        },
    }
}

/// Count the non-finite values among little-endian f32 bytes (exponent bits all ones):
/// integer work on whole words, so it vectorises and runs at memory speed.
fn count_non_finite_f32(bytes: &[u8]) -> usize {
    let bad = |u: u32| usize::from(u & 0x7f80_0000 == 0x7f80_0000);
    // SAFETY: every bit pattern is a valid u32, and align_to only reinterprets the aligned
    // middle; the unaligned ends are handled bytewise below.
    let (head, words, tail) = unsafe { bytes.align_to::<u32>() };
    if head.is_empty() && cfg!(target_endian = "little") {
        let whole = tail.len() / 4 * 4;
        words.iter().map(|&u| bad(u)).sum::<usize>()
            + tail[..whole].chunks_exact(4).map(|c| bad(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).sum::<usize>()
    } else {
        bytes.chunks_exact(4).map(|c| bad(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).sum()
    }
}

/// Produces each output tensor's bytes from the plan, releasing what the previous one read.
struct Producer<'p, 'ck> {
    p: &'p ImportPlan<'ck>,
    opts: &'p ImportOptions,
    lookup: HashMap<&'p str, &'ck TensorView>,
    stage: Stage,
    /// Non-finite values are counted as the bytes are written (a look at cache-hot pieces)
    /// instead of in `produce`.
    count_while_writing: bool,
    /// Output `j` is written straight from a source record whose CRC-32 is still to be
    /// checked: it is hashed from the pieces as they are written (`crc_while_writing`).
    crc_while_writing: Vec<Option<&'ck TensorView>>,
}

impl<'p, 'ck> Producer<'p, 'ck> {
    /// A producer for one file (`dest`), reporting its bytes as stage `write DEST`.
    fn new(p: &'p ImportPlan<'ck>, opts: &'p ImportOptions, count_while_writing: bool, dest: &Path) -> Self {
        let total: u64 = p.outs.iter().map(|t| t.nbytes() as u64).sum();
        let stage = opts.progress.stage(format!("write {}", dest.display()), total, Unit::Bytes);
        let lookup = p.sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut me = Producer { p, opts, lookup, stage, count_while_writing, crc_while_writing: Vec::new() };
        me.crc_while_writing = (0..p.outs.len()).map(|j| me.whole_pending_record(j)).collect();
        me
    }

    /// The source view of output `j` when `j` is written straight from it and its bytes are
    /// a whole record whose CRC-32 is still to be checked.
    fn whole_pending_record(&self, j: usize) -> Option<&'ck TensorView> {
        let v = *self.lookup.get(self.renamed_f32(j)?)?;
        (v.is_whole_storage() && v.storage().crc_pending()).then_some(v)
    }

    /// The source key of output `j` when it is a plain rename already in the output dtype:
    /// written straight from the mapped source, no copy.
    fn renamed_f32(&self, j: usize) -> Option<&'p str> {
        let t = &self.p.plan.targets[self.p.idx[j]];
        match &t.origin {
            Origin::Source { keys, transform: mapping::Transform::Rename, .. }
                if self.p.outs[j].dtype == DType::F32
                    && self.lookup.get(keys[0].as_str()).is_some_and(|v| v.dtype == DType::F32 && v.shape == t.entry.shape) =>
            {
                Some(keys[0].as_str())
            }
            _ => None,
        }
    }

    /// Release the source tensors output `j` read from the resident set.
    fn release(&self, j: usize) {
        if let Origin::Source { keys, .. } = &self.p.plan.targets[self.p.idx[j]].origin {
            for k in keys {
                if let Some(v) = self.lookup.get(k.as_str()) {
                    v.release();
                }
            }
        }
    }

    /// Output `j`'s bytes (releasing what `j - 1` read first).
    fn step(&self, j: usize, warn: &mut Vec<String>) -> Result<Cow<'ck, [u8]>, PipelineError> {
        if j > 0 {
            self.release(j - 1);
        }
        let b = self.produce(j, warn);
        self.stage.inc(self.p.outs[j].nbytes() as u64);
        b
    }

    fn produce(&self, j: usize, warn: &mut Vec<String>) -> Result<Cow<'ck, [u8]>, PipelineError> {
        let t = &self.p.plan.targets[self.p.idx[j]];
        // Source records are CRC-checked before their bytes are used, unless the writer
        // hashes them on the way out (then checked before anything else reads them).
        if self.crc_while_writing[j].is_none()
            && let Origin::Source { keys, .. } = &t.origin
        {
            for k in keys {
                if let Some(v) = self.lookup.get(k.as_str()) {
                    v.check_storage(false)?;
                }
            }
        }
        if let Some(key) = self.renamed_f32(j)
            && let Some(v) = self.lookup.get(key)
        {
            let b = match v.le_bytes_borrowed() {
                Some(b) => Cow::Borrowed(b),
                None => Cow::Owned(v.to_le_bytes()),
            };
            // Into the safetensors file the bytes are counted as they are written;
            // --strict-finite refuses before writing, and the .pth-only import counts here.
            if !self.count_while_writing {
                let bad = count_non_finite_f32(&b);
                if bad > 0 {
                    if self.opts.strict_finite {
                        return Err(ImportError::NonFinite { source_key: key.to_string(), count: bad }.into());
                    }
                    warn.push(format!("{key}: {bad} non-finite values"));
                }
            }
            return Ok(b);
        }
        let vals = mapping::produce(t, &self.lookup, &self.opts.plan, self.opts.seed)?;
        if let Values::F32(x) = &vals {
            let bad = x.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                if self.opts.strict_finite {
                    return Err(ImportError::NonFinite { source_key: t.entry.name.clone(), count: bad }.into());
                }
                warn.push(format!("{}: {bad} non-finite values", t.entry.name));
            }
        }
        Ok(Cow::Owned(encode(&t.entry.name, &vals, self.p.outs[j].dtype)?))
    }

    /// Release what the last output read; the file's stage is done.
    fn finish_file(self) {
        if let Some(last) = self.p.outs.len().checked_sub(1) {
            self.release(last);
        }
        let bytes: u64 = self.p.outs.iter().map(|t| t.nbytes() as u64).sum();
        self.stage.finish(&format!("{} tensors, {bytes} bytes", self.p.outs.len()));
    }
}

/// Step 2's result: the safetensors artifact under its temporary name, not yet published.
pub struct Written {
    pending: Option<Pending>,
    warnings: Vec<String>,
}

/// Step 2: stream every tensor into the safetensors artifact's temporary file (when `-o` is
/// given), the header holding placeholders for the source hash and the verdict.
pub fn write(p: &ImportPlan<'_>, opts: &ImportOptions) -> Result<Written, PipelineError> {
    let Some(out) = &opts.out else {
        check_remaining_crcs(p.ck)?;
        return Ok(Written { pending: None, warnings: Vec::new() });
    };
    let producer = Producer::new(p, opts, !opts.strict_finite, out);
    // Verification reads the whole file back right after: through the page cache then
    // (BEiTv2-L: its round trip 1.4 s from disk, 0.3 s from memory), direct I/O otherwise.
    let mut pending = Pending::begin(out, opts.force, &p.outs, &p.meta.to_map(), !opts.verify)?;
    let mut warnings = Vec::new();
    let mut bad_counts = vec![0usize; p.outs.len()];
    let mut crcs: Vec<Option<crc32fast::Hasher>> =
        producer.crc_while_writing.iter().map(|v| v.map(|_| crc32fast::Hasher::new())).collect();
    pending.write_tensors(&p.outs, |j| producer.step(j, &mut warnings), |j, piece| {
        if producer.count_while_writing && producer.renamed_f32(j).is_some() {
            bad_counts[j] += count_non_finite_f32(piece);
        }
        if let Some(h) = &mut crcs[j] {
            h.update(piece);
        }
    })?;
    // The records hashed on the way out, then every record no output read: all checked
    // before the artifact is verified or published (a mismatch fails the import, and the
    // temporary file is removed).
    for (h, v) in crcs.into_iter().zip(&producer.crc_while_writing) {
        if let (Some(h), Some(v)) = (h, v) {
            v.storage().accept_crc(h.finalize())?;
        }
    }
    check_remaining_crcs(p.ck)?;
    for (j, &bad) in bad_counts.iter().enumerate() {
        if bad > 0
            && let Some(key) = producer.renamed_f32(j)
        {
            warnings.push(format!("{key}: {bad} non-finite values"));
        }
    }
    producer.finish_file();
    Ok(Written { pending: Some(pending), warnings })
}

/// Step 3: `verify`'s checks (`verify::artifact::artifact_report`) on the written file,
/// still under its temporary name; checks are named after the destination, so the recorded
/// verdict does not depend on the temporary name. A check sequence that cannot run is a
/// failed check naming why, never a panic. `None` when verification is off or there is no
/// safetensors artifact.
pub fn verify(p: &ImportPlan<'_>, w: &mut Written, opts: &ImportOptions) -> Result<Option<Report>, PipelineError> {
    let (Some(pending), Some(dest), true) = (w.pending.as_mut(), opts.out.as_ref(), opts.verify) else {
        return Ok(None);
    };
    let tmp = pending.flushed()?.to_path_buf();
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (tmp_name, dest_name) = (file_name(&tmp), file_name(dest));
    let report = match crate::verify::artifact::artifact_report(&tmp, Some(p.ck), None, &p.config, &[], opts.seed, &opts.progress)
    {
        Ok(mut report) => {
            if !tmp_name.is_empty() {
                report.checks.iter_mut().for_each(|c| c.name = c.name.replace(&tmp_name, &dest_name));
            }
            report
        }
        Err(e) => Report { checks: vec![Check::outcome("verify", &[1], 1, Some(0), Some(e.to_string()))] },
    };
    Ok(Some(report))
}

/// Step 4: fill the source hash and the verdict into the header, publish the safetensors
/// artifact, then write and publish the `.pth` (with the same, final metadata), the config
/// and the report.
/// `times` holds the earlier steps' figures; commit adds its own (up to the report) and the
/// total.
pub fn commit(
    p: ImportPlan<'_>,
    w: Written,
    source_sha256: String,
    report: Option<Report>,
    mut times: Times,
    opts: &ImportOptions,
) -> Result<ImportSummary, PipelineError> {
    let t0 = std::time::Instant::now();
    let mut meta = p.meta.clone();
    meta.source_sha256 = source_sha256;
    let mut warnings = p.warnings.clone();
    warnings.extend(w.warnings);
    if let Some(mut pending) = w.pending {
        pending.fill(SOURCE_SHA_KEY, HASH_PLACEHOLDER, &meta.source_sha256)?;
        if let Some(r) = &report {
            pending.fill(VERIFY_KEY, &verdict_placeholder(), &policy::header_verdict(r))?;
        }
        pending.commit()?;
    }
    if let Some(r) = &report {
        meta.verify = policy::compact_verdict(r, usize::MAX);
    }
    if let Some(pth) = &opts.pth {
        let producer = Producer::new(&p, opts, false, pth);
        let pmeta: Vec<(String, String)> = meta.to_map().into_iter().collect();
        let mut w2 = Vec::new();
        let outs: Cow<'_, [OutTensor]> = match opts.key_prefix.as_deref() {
            Some(prefix) => p.outs.iter().map(|t| OutTensor { name: format!("{prefix}{}", t.name), ..t.clone() }).collect(),
            None => Cow::Borrowed(&p.outs),
        };
        crate::export::pth::write(pth, opts.force, &outs, &pmeta, |j| producer.step(j, &mut w2))?;
        producer.finish_file();
        if opts.out.is_none() {
            warnings.extend(w2);
        }
    }
    if let Some(path) = config_path(opts) {
        let text = serde_json::to_string_pretty(&meta.config).unwrap_or_default();
        crate::export::atomic::write_all(&path, text.as_bytes(), opts.force)?;
    }
    times.commit_s = t0.elapsed().as_secs_f64();
    times.total_s = times.read_s + times.plan_s + times.write_s + times.verify_s + times.commit_s;
    let format = match p.ck.full_model() {
        Some(what) => format!("{} ({what})", p.ck.format.name()),
        None => p.ck.format.name().to_string(),
    };
    let overview = Overview {
        source: p.ck.path.display().to_string(),
        format,
        family: p.family.name().into(),
        family_reason: p.family_reason.clone(),
        target: p.target.clone(),
        flavor: p.config.flavor.name().into(),
        target_reason: p.target_reason.clone(),
        verdict: verdict_words(report.as_ref(), opts),
        outputs: output_paths(opts).iter().map(|o| o.display().to_string()).collect(),
        times,
    };
    let summary = ImportSummary {
        summary: overview,
        source: meta.source.clone(),
        family: p.family.name().into(),
        flavor: p.config.flavor.name().into(),
        source_config: p.source_config,
        config: meta.config.clone(),
        seed: opts.seed,
        plan: p.plan,
        warnings,
        transforms: meta.transforms.clone(),
        verify: report,
    };
    if let Some(r) = &opts.report {
        let json = crate::text::json_safe(&serde_json::to_string_pretty(&summary).unwrap_or_default());
        crate::export::atomic::write_all(r, json.as_bytes(), opts.force)?;
        crate::export::atomic::write_all(&r.with_extension("txt"), human_report(&summary).as_bytes(), opts.force)?;
    }
    Ok(summary)
}

/// SHA-256 of the source: the bundled bytes, or the file / folder (`formats::sha256`).
fn source_hash(source: &Path, bytes: Option<&[u8]>) -> Result<String, ImportError> {
    match bytes {
        Some(b) => Ok(crate::formats::sha256_bytes(b)),
        None => crate::formats::sha256(source)
            .map_err(|e| ImportError::Input { path: source.to_path_buf(), reason: format!("hashing: {e}") }),
    }
}

/// The verdict in words, for the [`Overview`].
fn verdict_words(report: Option<&Report>, opts: &ImportOptions) -> String {
    let Some(r) = report else {
        return format!("not run ({})", if opts.verify { "no safetensors output" } else { "--no-verify" });
    };
    let first = r.first_failure().map(|c| format!("; first failure: {}", c.name)).unwrap_or_default();
    format!("{} ({} checks ran, {} skipped{first})", policy::verdict(r), r.checks.len() - r.skipped(), r.skipped())
}

/// Import `source` (a file or folder; `bytes` when it is bundled in memory): [`plan`],
/// [`write`], [`verify`], [`commit`], the source hashed on a second thread meanwhile; each
/// step timed, reading and writing reported to `opts.progress`.
pub fn run(source: &Path, bytes: Option<&[u8]>, opts: &ImportOptions) -> Result<ImportSummary, PipelineError> {
    let mut times = Times::default();
    let mut clock = std::time::Instant::now();
    let mut lap = |slot: &mut f64| {
        *slot = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
    };
    let reading = opts.progress.stage(format!("read {}", source.display()), 1, Unit::Steps);
    let mut ck = open(source, bytes)?;
    if let Some(act) = opts.source_activation {
        detect::set_activation(&mut ck.metadata, act == detect::Activation::QuickGelu, "--source-activation");
    }
    reading.finish(&format!("{}, {} tensors", ck.format.name(), ck.tensors().len()));
    lap(&mut times.read_s);
    let p = plan(&ck, source, opts)?;
    lap(&mut times.plan_s);
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| source_hash(source, bytes));
        let mut written = write(&p, opts)?;
        lap(&mut times.write_s);
        let report = verify(&p, &mut written, opts)?;
        lap(&mut times.verify_s);
        let hash = match hashing.join() {
            Ok(h) => h?,
            Err(_) => {
                return Err(ImportError::Input { path: source.to_path_buf(), reason: "the hashing thread panicked".into() }.into());
            }
        };
        commit(p, written, hash, report, times, opts)
    })
}

/// The [`Overview`] as the first lines of the human output and of `R.txt`; `wrote PATH`
/// lines list the outputs.
pub fn render_overview(o: &Overview) -> String {
    let t = &o.times;
    // The source's name, the reasons (which may quote keys) and the file names are escaped.
    let mut out = format!(
        "source   {} ({})\nfamily   {}: {}\ntarget   {} ({}): {}\nverdict  {}\n",
        Escaped(&o.source),
        o.format,
        o.family,
        Escaped(&o.family_reason),
        o.target,
        o.flavor,
        Escaped(&o.target_reason),
        Escaped(&o.verdict)
    );
    for f in &o.outputs {
        out.push_str(&format!("wrote {}\n", Escaped(f)));
    }
    out.push_str(&format!(
        "times    read {:.2} s, plan {:.2} s, write {:.2} s, verify {:.2} s, commit {:.2} s; total {:.2} s\n",
        t.read_s, t.plan_s, t.write_s, t.verify_s, t.commit_s, t.total_s
    ));
    out
}

/// The human summary: every target key with its origin, every source key with its fate.
/// Source keys, the source's name and the decisions naming them are escaped
/// (`text::Escaped`): the summary is read on a terminal.
pub fn human_report(s: &ImportSummary) -> String {
    let mut out = render_overview(&s.summary);
    out.push_str(&format!(
        "\ncomer-port import: {} ({}) -> {} seed {}\n\nTarget keys:\n",
        Escaped(&s.source),
        s.family,
        s.flavor,
        s.seed
    ));
    for p in &s.plan.targets {
        let how = match &p.origin {
            Origin::Source { keys, transform, .. } => format!("{} <- {}", transform.name(), Escaped(&keys.join(" + "))),
            Origin::Fresh { init, reason } => format!("fresh {init:?} ({})", Escaped(reason)),
        };
        out.push_str(&format!("  {} {:?}: {how}\n", Escaped(&p.entry.name), p.entry.shape));
    }
    out.push_str("\nSource keys:\n");
    for f in &s.plan.sources {
        out.push_str(&format!("  {}: {} ({})\n", Escaped(&f.key), f.fate, Escaped(&f.detail)));
    }
    if !s.plan.decisions.is_empty() || !s.warnings.is_empty() {
        out.push_str("\nDecisions and warnings:\n");
        for d in s.plan.decisions.iter().chain(&s.warnings) {
            out.push_str(&format!("  {}\n", Escaped(d)));
        }
    }
    out
}

#[cfg(test)]
mod error_tests;

#[cfg(test)]
mod tests {
    use super::count_non_finite_f32;

    #[test]
    fn non_finite_count_on_aligned_and_unaligned_bytes() {
        let vals = [1.0f32, f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 3.5];
        let mut bytes = vec![0u8];
        for v in vals.iter().cycle().take(1001) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let want = vals.iter().cycle().take(1001).filter(|v| !v.is_finite()).count();
        assert_eq!(count_non_finite_f32(&bytes[1..]), want, "unaligned start");
        let aligned: Vec<u8> = bytes[1..].to_vec();
        assert_eq!(count_non_finite_f32(&aligned), want);
    }
}
