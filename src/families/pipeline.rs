//! `import` end to end: open the source, pick the family, resolve and check the target
//! config, plan every target key, then stream the artifacts (safetensors, `.pth`), the
//! `config.json` beside them and the provenance report. Mirrors what a user does today in
//! Python with upstream's code (`torch.load`, build `ViTCoMer`/`BEiTComer2`, the Co-DETR
//! branch's checkpoint loader, `load_state_dict`, `save_file`) without holding two copies.

use super::error::{ImportError, PipelineError};
use super::mapping::{self, Origin, Plan, PlanOptions, SourceDims, Values};
use crate::export::safetensors::OutTensor;
use crate::formats::{DType, TensorView};
use crate::model::{ComerConfig, Flavor};
use crate::target::{Basis, TargetSpec, resolve};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Everything `import` needs besides the source.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub family: Option<String>,
    pub target: TargetSpec,
    pub seed: u64,
    pub dtype: DType,
    pub plan: PlanOptions,
    pub strict_finite: bool,
    pub no_buffers: bool,
    pub out: Option<PathBuf>,
    pub pth: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub write_config: bool,
    pub force: bool,
    pub progress: bool,
    /// Verify the written safetensors artifact before it is renamed into place (round trip,
    /// mapping parity, backbone) and record the verdict in its `comer_port.verify` metadata.
    pub verify: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            family: None,
            target: TargetSpec::Flavor(Flavor::Det),
            seed: 0,
            dtype: DType::F32,
            plan: PlanOptions::default(),
            strict_finite: false,
            no_buffers: false,
            out: None,
            pth: None,
            report: None,
            write_config: true,
            force: false,
            progress: false,
            verify: false,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    pub source: String,
    pub family: String,
    pub flavor: String,
    pub source_dims: SourceDims,
    pub config: serde_json::Value,
    pub seed: u64,
    pub plan: Plan,
    pub warnings: Vec<String>,
    pub transforms: serde_json::Value,
    /// What the verification of the written artifact found (`None` when it did not run).
    pub verify: Option<crate::verify::Report>,
}

/// Pick the family: explicit, else what `families::detect` (the detector `inspect` and
/// `verify` use) recognises, else the mappings' key-pattern guess.
pub fn pick_family(given: Option<&str>, detected: super::detect::Family, keys: &[&str]) -> Result<String, ImportError> {
    if let Some(f) = given {
        return Ok(f.to_string());
    }
    if detected != super::detect::Family::Unknown {
        return Ok(detected.name().to_string());
    }
    super::guess(keys).map(str::to_string).ok_or_else(|| ImportError::UnknownFamily {
        reason: "no family's key patterns match".into(),
    })
}

/// Refuse a source whose dimensions differ from the target's.
pub fn check_dims(d: &SourceDims, c: &ComerConfig) -> Result<(), ImportError> {
    let mlp = (c.embed_dim as f64 * c.mlp_ratio) as usize;
    let checks = [
        ("embed dim", d.embed_dim, c.embed_dim),
        ("depth", d.depth, c.depth),
        ("number of heads", d.num_heads, c.num_heads),
        ("mlp hidden size", d.mlp_hidden, mlp),
    ];
    for (what, src, tgt) in checks {
        if let Some(s) = src
            && s != tgt
        {
            return Err(ImportError::DimensionMismatch { what: what.into(), source_value: s, target_value: tgt });
        }
    }
    Ok(())
}

/// Plan an import from an in-memory state dict (no file needed).
pub fn plan_state_dict(
    family: &str,
    sd: &[(String, &TensorView)],
    target: &TargetSpec,
    opts: &PlanOptions,
) -> Result<(ComerConfig, SourceDims, Plan), PipelineError> {
    let m = super::mapping_for(family)?;
    let dims = mapping::infer_dims(&m.infer, sd);
    let cfg = resolve(target, Basis::Source(&dims))?;
    check_dims(&dims, &cfg)?;
    let layout = crate::model::layout::target_layout(&cfg);
    let plan = mapping::plan(&m, &layout, sd, opts)?;
    Ok((cfg, dims, plan))
}

/// Encode produced values in the output dtype; f16 overflow is an error naming the key.
pub fn encode(name: &str, v: &Values, dtype: DType) -> Result<Vec<u8>, ImportError> {
    match v {
        Values::I64(x) => {
            let mut out = vec![0u8; x.len() * 8];
            for (o, v) in out.chunks_exact_mut(8).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            Ok(out)
        }
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
            _ => {
                let mut out = vec![0u8; x.len() * 4];
                for (o, f) in out.chunks_exact_mut(4).zip(x) {
                    o.copy_from_slice(&f.to_le_bytes());
                }
                Ok(out)
            }
        },
    }
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

/// Every file an import with `opts` writes.
pub fn output_paths(opts: &ImportOptions) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = opts.out.iter().chain(&opts.pth).cloned().collect();
    if opts.write_config
        && let Some(first) = opts.out.as_ref().or(opts.pth.as_ref())
    {
        let dir = first.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        v.push(dir.join("config.json"));
    }
    if let Some(r) = &opts.report {
        v.push(r.clone());
        v.push(r.with_extension("txt"));
    }
    v
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

/// Import `source` (a file or folder; `bytes` when it is bundled in memory).
pub fn run(source: &Path, bytes: Option<&[u8]>, opts: &ImportOptions) -> Result<ImportSummary, PipelineError> {
    let ck = match bytes {
        Some(b) => crate::formats::open_bytes(source, b.to_vec())?,
        None => crate::formats::open(source)?,
    };
    let (_wrapper, sd) = ck.state_dict();
    let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    let detected = if opts.family.is_some() {
        super::detect::Family::Unknown
    } else {
        super::detect::detect_checkpoint(&ck).family
    };
    let family = pick_family(opts.family.as_deref(), detected, &keys)?;
    let sd = super::mapping_for(&family)?.normalise_keys(sd);
    let (cfg, dims, plan) = plan_state_dict(&family, &sd, &opts.target, &opts.plan)?;
    let lookup: HashMap<&str, &TensorView> = sd.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut warnings = Vec::new();
    if let Some(eps) = ck.metadata.get("layer_norm_eps").and_then(|v| v.parse::<f64>().ok())
        && (eps - 1e-6).abs() > 1e-12
    {
        warnings.push(format!(
            "the source's LayerNorm eps is {eps}; upstream's blocks use 1e-6 (a tiny, documented numerical difference)"
        ));
    }
    if family == "clip" {
        warnings.push(
            "CLIP: OpenAI weights use QuickGELU, upstream's blocks use exact GELU; the activation is not recorded in the checkpoint, so the ViT branch deviates for QuickGELU models".into(),
        );
    }
    let transforms = serde_json::json!({
        "relpos_resize": if opts.plan.relpos_geometric { "geometric" } else { "bicubic" },
        "patch_resize": if opts.plan.patch_pinv { "pinv" } else { "bilinear" },
        "pos_resize": "bicubic",
        "lossy": opts.plan.lossy,
        "used": plan.targets.iter().filter_map(|p| match &p.origin {
            Origin::Source { transform, .. } => Some(transform.name()),
            _ => None,
        }).collect::<std::collections::BTreeSet<_>>(),
        "decisions": plan.decisions,
    });
    // Every destination is checked before the first byte is written: an import that would
    // stop at its third file must not leave the first two behind.
    if !opts.force {
        for dest in output_paths(opts) {
            if dest.exists() {
                return Err(crate::export::atomic::WriteError::Exists(dest).into());
            }
        }
    }
    let source_name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let config_json = cfg.to_case_json();
    let (outs, idx) = outputs(&plan, opts.dtype, opts.no_buffers);
    let total: u64 = outs.iter().map(|t| t.nbytes() as u64).sum();
    // The source hash is computed on a second thread while the tensors are written, and
    // patched into the safetensors header at the end (it has a fixed length).
    const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    let sha = PLACEHOLDER.to_string();
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    meta.insert("comer_port.version".into(), crate::VERSION.into());
    meta.insert("comer_port.source".into(), source_name.clone());
    meta.insert("comer_port.source_sha256".into(), sha);
    meta.insert("comer_port.family".into(), family.clone());
    meta.insert("comer_port.flavor".into(), cfg.flavor.name().into());
    meta.insert("comer_port.config".into(), config_json.to_string());
    meta.insert("comer_port.seed".into(), opts.seed.to_string());
    meta.insert("comer_port.transforms".into(), transforms.to_string());
    meta.insert("format".into(), "pt".into());
    let verify_placeholder = crate::verify::on_import::verdict_placeholder();
    let will_verify = opts.verify && opts.out.is_some();
    meta.insert(
        "comer_port.verify".into(),
        if will_verify {
            verify_placeholder.clone()
        } else {
            serde_json::json!({ "verdict": "not run", "why": if opts.verify { "no safetensors output" } else { "--no-verify" } })
                .to_string()
        },
    );
    let mut verify_report: Option<crate::verify::Report> = None;

    // A renamed tensor already in the output dtype is written straight from the mapped
    // source (no copy), and its pages are released from the resident set once written: the
    // import never holds two copies, and never the whole input.
    let count_while_writing = opts.out.is_some() && !opts.strict_finite;
    let renamed_f32 = |j: usize| {
        let p = &plan.targets[idx[j]];
        match &p.origin {
            Origin::Source { keys, transform: mapping::Transform::Rename, .. }
                if outs[j].dtype == DType::F32
                    && lookup.get(keys[0].as_str()).is_some_and(|v| v.dtype == DType::F32 && v.shape == p.entry.shape) =>
            {
                Some(keys[0].as_str())
            }
            _ => None,
        }
    };
    let mut bad_counts = vec![0usize; outs.len()];
    let produce = |j: usize, warn: &mut Vec<String>| -> Result<Cow<'_, [u8]>, PipelineError> {
        let p = &plan.targets[idx[j]];
        if let Some(key) = renamed_f32(j)
            && let Some(v) = lookup.get(key)
        {
            let b = match v.le_bytes_borrowed() {
                Some(b) => Cow::Borrowed(b),
                None => Cow::Owned(v.to_le_bytes()),
            };
            // Into the safetensors file the bytes are counted as they are written (`inspect`
            // below: a look at cache-hot pieces instead of a pass over memory); --strict-finite
            // refuses before writing, and the .pth-only import counts here.
            if !count_while_writing {
                let bad = count_non_finite_f32(&b);
                if bad > 0 {
                    if opts.strict_finite {
                        return Err(ImportError::NonFinite { source_key: key.to_string(), count: bad }.into());
                    }
                    warn.push(format!("{key}: {bad} non-finite values"));
                }
            }
            return Ok(b);
        }
        let vals = mapping::produce(p, &lookup, &opts.plan, opts.seed)?;
        if let Values::F32(x) = &vals {
            let bad = x.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                if opts.strict_finite {
                    return Err(ImportError::NonFinite { source_key: p.entry.name.clone(), count: bad }.into());
                }
                warn.push(format!("{}: {bad} non-finite values", p.entry.name));
            }
        }
        Ok(Cow::Owned(encode(&p.entry.name, &vals, outs[j].dtype)?))
    };
    // The source tensors target `j` read from, released after it is written.
    let release = |j: usize| {
        if let Origin::Source { keys, .. } = &plan.targets[idx[j]].origin {
            for k in keys {
                if let Some(v) = lookup.get(k.as_str()) {
                    v.release();
                }
            }
        }
    };
    let bar = if opts.progress && total > (64 << 20) {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    // One tensor of either writer: release what the previous one read, produce, count progress.
    let step = |j: usize, warn: &mut Vec<String>| {
        if j > 0 {
            release(j - 1);
        }
        let b = produce(j, warn);
        bar.inc(outs[j].nbytes() as u64);
        b
    };
    let hasher = std::thread::scope(|scope| -> Result<String, PipelineError> {
        let handle = scope.spawn(|| match bytes {
            Some(b) => Ok(crate::formats::sha256_bytes(b)),
            None => crate::formats::sha256(source).map_err(|e| ImportError::Input { path: source.to_path_buf(), reason: format!("hashing: {e}") }),
        });
        let mut hash = None;
        if let Some(out) = &opts.out {
            bar.set_position(0);
            let mut late = vec![crate::export::safetensors::LateValue {
                placeholder: PLACEHOLDER.into(),
                value: Box::new(|_: &Path| {
                    let h = match handle.join() {
                        Ok(Ok(h)) => h,
                        Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                        Err(_) => return Err(std::io::Error::other("the hashing thread panicked")),
                    };
                    hash = Some(h.clone());
                    Ok(h)
                }),
            }];
            if will_verify {
                let (ck, cfg, report) = (&ck, &cfg, &mut verify_report);
                late.push(crate::export::safetensors::LateValue {
                    placeholder: verify_placeholder.clone(),
                    value: Box::new(move |tmp: &Path| {
                        // Approximations (f16/bf16, --lossy) are read back from the written
                        // metadata, exactly as `comer-port verify` reads them.
                        let r = crate::verify::on_import::import_checks(ck, tmp, out, cfg, opts.seed);
                        let text = crate::verify::on_import::header_verdict(&r);
                        *report = Some(r);
                        Ok(text)
                    }),
                });
            }
            crate::export::safetensors::write_late(out, opts.force, &outs, &meta, late, |j| step(j, &mut warnings), |j, piece| {
                if count_while_writing && renamed_f32(j).is_some() {
                    bad_counts[j] += count_non_finite_f32(piece);
                }
            })?;
            if let Some(last) = outs.len().checked_sub(1) {
                release(last);
            }
            for (j, &bad) in bad_counts.iter().enumerate() {
                if bad > 0 && let Some(key) = renamed_f32(j) {
                    warnings.push(format!("{key}: {bad} non-finite values"));
                }
            }
            return Ok(hash.unwrap_or_default());
        }
        match handle.join() {
            Ok(h) => Ok(h?),
            Err(_) => Err(ImportError::Input { path: source.to_path_buf(), reason: "the hashing thread panicked".into() }.into()),
        }
    })?;
    meta.insert("comer_port.source_sha256".into(), hasher);
    if let Some(r) = &verify_report {
        meta.insert("comer_port.verify".into(), crate::verify::on_import::compact_verdict(r, usize::MAX));
    }
    if let Some(pth) = &opts.pth {
        bar.set_position(0);
        let pmeta: Vec<(String, String)> = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut w2 = Vec::new();
        crate::export::pth::write(pth, opts.force, &outs, &pmeta, |j| step(j, &mut w2))?;
        if let Some(last) = outs.len().checked_sub(1) {
            release(last);
        }
        if opts.out.is_none() {
            warnings.extend(w2);
        }
    }
    bar.finish_and_clear();
    if opts.write_config
        && let Some(first) = opts.out.as_ref().or(opts.pth.as_ref())
    {
        let dir = first.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let text = serde_json::to_string_pretty(&config_json).unwrap_or_default();
        crate::export::atomic::write_all(&dir.join("config.json"), text.as_bytes(), opts.force)?;
    }
    let summary = ImportSummary {
        source: source_name,
        family,
        flavor: cfg.flavor.name().into(),
        source_dims: dims,
        config: config_json,
        seed: opts.seed,
        plan,
        warnings,
        transforms,
        verify: verify_report,
    };
    if let Some(r) = &opts.report {
        let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
        crate::export::atomic::write_all(r, json.as_bytes(), opts.force)?;
        crate::export::atomic::write_all(&r.with_extension("txt"), human_report(&summary).as_bytes(), opts.force)?;
    }
    Ok(summary)
}

/// The human summary: every target key with its origin, every source key with its fate.
pub fn human_report(s: &ImportSummary) -> String {
    let mut out = format!(
        "comer-port import: {} ({}) -> {} seed {}\n\nTarget keys:\n",
        s.source, s.family, s.flavor, s.seed
    );
    for p in &s.plan.targets {
        let how = match &p.origin {
            Origin::Source { keys, transform, .. } => format!("{} <- {}", transform.name(), keys.join(" + ")),
            Origin::Fresh { init, reason } => format!("fresh {init:?} ({reason})"),
        };
        out.push_str(&format!("  {} {:?}: {how}\n", p.entry.name, p.entry.shape));
    }
    out.push_str("\nSource keys:\n");
    for f in &s.plan.sources {
        out.push_str(&format!("  {}: {} ({})\n", f.key, f.fate, f.detail));
    }
    if !s.plan.decisions.is_empty() || !s.warnings.is_empty() {
        out.push_str("\nDecisions and warnings:\n");
        for d in s.plan.decisions.iter().chain(&s.warnings) {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}

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
