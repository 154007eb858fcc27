//! `comer-port inspect FILE`: container, size, sha256, wrapper structure, tensor table,
//! detected family and inferred config.
//!
//! Mirrors what one would piece together in Python from `torch.load(weights_only=True)`,
//! `hashlib.sha256` and `timm`'s key conventions, without executing anything. Only the
//! object tree is read; tensor bytes are touched only by `--check-finite` (and by sha256,
//! which streams the file once: `formats::sha256`, the hash `import` records, for a folder
//! over all its files in name order).

use comer_port::families::detect::{self, Detection};
use comer_port::formats::{self, Checkpoint, TensorView, Value};
use comer_port::text::{Escaped, EscapedPath, escape, json_safe};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `comer-port inspect`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  comer-port inspect deit_tiny.pth\n  comer-port inspect beitv2.pth --json\n  comer-port inspect ViT-B-16.pt --all\n  comer-port inspect augreg.npz --check-finite\n  comer-port inspect ./vit-base-patch16-224-in21k/   (a Hugging Face folder)\n  comer-port inspect deit_tiny.pth --libtorch   (trusted files only)\n\nExit codes: 0 ok, 1 non-finite values found (--check-finite) or the readers differ (--libtorch), 2 usage, 3 the file was refused.")]
pub struct Args {
    /// Checkpoint file (.pth/.pt/.bin/.safetensors/.npz/.npy) or Hugging Face folder.
    pub file: PathBuf,
    /// Print one JSON object (format, sha256, family, config, tensors, …) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// List every tensor instead of collapsing `blocks.{0..11}.…` rows.
    #[arg(long)]
    pub all: bool,
    /// Read every float tensor and report NaN/Inf values (exit 1 when any).
    #[arg(long)]
    pub check_finite: bool,
    /// Always compute the sha256 (by default it is skipped for inputs over 256 MiB, where
    /// hashing every byte would dominate an otherwise instant inspect).
    #[arg(long, conflicts_with = "no_sha256")]
    pub sha256: bool,
    /// Never compute the sha256.
    #[arg(long)]
    pub no_sha256: bool,
    /// Read the file through libtorch too; show both tensor lists side by side when they differ
    /// (trusted files only; exit 1 when they differ).
    #[arg(long, long_help = super::LIBTORCH_HELP)]
    pub libtorch: bool,
}

/// Inputs up to this size are hashed by default; larger ones only with `--sha256`.
pub const AUTO_SHA256_MAX: u64 = 256 << 20;

/// Files whose tensors make up the checkpoint (the file, or a folder's weight files): the size shown.
fn weight_files(ck: &Checkpoint) -> Vec<PathBuf> {
    if ck.path.is_dir() {
        ck.metadata
            .get("files")
            .map(|f| f.split(',').map(|n| ck.path.join(n)).collect())
            .unwrap_or_default()
    } else {
        vec![ck.path.clone()]
    }
}

/// One row of the tensor table: a name pattern and the block indices it covers.
struct Row {
    pattern: String,
    indices: Vec<usize>,
    dtype: &'static str,
    shape: Vec<usize>,
    numel: usize,
    bytes: usize,
}

/// Replace the first all-digit path component by `{}`; returns the pattern and the index.
fn split_index(name: &str) -> Option<(String, usize)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts.iter().position(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))?;
    let idx = parts[i].parse().ok()?;
    let mut out = parts.clone();
    out[i] = "{}";
    Some((out.join("."), idx))
}

fn rows(tensors: &[(String, &TensorView)], all: bool) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut at: BTreeMap<(String, &'static str, Vec<usize>), usize> = BTreeMap::new();
    for (name, t) in tensors {
        let (pattern, idx) = match (all, split_index(name)) {
            (false, Some((p, i))) => (p, Some(i)),
            _ => (name.clone(), None),
        };
        let key = (pattern.clone(), t.dtype.name(), t.shape.clone());
        if let (Some(i), Some(&r)) = (idx, at.get(&key)) {
            out[r].indices.push(i);
            out[r].numel += t.numel();
            out[r].bytes += t.nbytes();
            continue;
        }
        if idx.is_some() {
            at.insert(key, out.len());
        }
        out.push(Row {
            pattern,
            indices: idx.into_iter().collect(),
            dtype: t.dtype.name(),
            shape: t.shape.clone(),
            numel: t.numel(),
            bytes: t.nbytes(),
        });
    }
    out
}

impl Row {
    fn name(&self) -> String {
        if self.indices.is_empty() {
            return self.pattern.clone();
        }
        let (lo, hi) = (self.indices[0], self.indices[self.indices.len() - 1]);
        let contiguous = self.indices.windows(2).all(|w| w[1] == w[0] + 1);
        let set = if self.indices.len() == 1 {
            lo.to_string()
        } else if contiguous {
            format!("{{{lo}..{hi}}}")
        } else {
            format!("{{{}}}", self.indices.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","))
        };
        self.pattern.replacen("{}", &set, 1)
    }
}

/// The top-level structure: `dict{model: dict(152 tensors), epoch: int, …}`.
fn structure(v: &Value, depth: usize) -> String {
    let mut n = Vec::new();
    v.collect_tensors("", &mut n);
    match v {
        Value::Dict(items) if depth < 2 && items.iter().any(|(_, x)| !matches!(x, Value::Tensor(_))) => {
            let inner: Vec<String> = items
                .iter()
                .take(12)
                .map(|(k, x)| {
                    let k = k.as_str().map(str::to_string).unwrap_or_else(|| format!("<{}>", k.kind()));
                    format!("{k}: {}", structure(x, depth + 1))
                })
                .collect();
            let more = if items.len() > 12 { format!(", … {} more", items.len() - 12) } else { String::new() };
            format!("dict{{{}{more}}}", inner.join(", "))
        }
        Value::Dict(items) => format!("dict({} entries, {} tensors)", items.len(), n.len()),
        Value::Object { class, .. } => format!("{class}({} tensors)", n.len()),
        Value::Int(i) => format!("int {i}"),
        Value::Str(s) if s.len() <= 40 => format!("str {s:?}"),
        other if n.is_empty() => other.kind().to_string(),
        other => format!("{}({} tensors)", other.kind(), n.len()),
    }
}

/// Non-finite counts of one tensor (integers are always finite).
fn non_finite(t: &TensorView) -> (usize, usize) {
    if !t.dtype.is_float() {
        return (0, 0);
    }
    t.to_f32().iter().fold((0, 0), |(n, i), v| (n + v.is_nan() as usize, i + v.is_infinite() as usize))
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn size_of(paths: &[PathBuf]) -> u64 {
    paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    #[cfg(not(feature = "libtorch"))]
    if args.libtorch {
        return Err(super::no_libtorch().into());
    }
    let t0 = Instant::now();
    let ck = formats::open(&args.file)?;
    let read_s = t0.elapsed().as_secs_f64();
    let size = size_of(&weight_files(&ck));
    let t1 = Instant::now();
    // The hash `import` records: a folder's every file, so the threshold counts what it reads.
    let io = |e: std::io::Error| formats::FormatError::io(&args.file, e);
    let want_sha = !args.no_sha256
        && (args.sha256 || size_of(&formats::checkpoint_files(&ck.path).map_err(io)?) <= AUTO_SHA256_MAX);
    let sha = if want_sha { Some(formats::sha256(&ck.path).map_err(io)?) } else { None };
    let sha_s = t1.elapsed().as_secs_f64();
    let tensors = ck.tensors();
    let det: Detection = detect::detect_checkpoint(&ck);
    let (wrapper, sd) = ck.state_dict();
    let total_numel: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
    let total_bytes: usize = tensors.iter().map(|(_, t)| t.nbytes()).sum();

    let mut bad: Vec<(String, usize, usize)> = Vec::new();
    if args.check_finite {
        for (n, t) in &tensors {
            let (nan, inf) = non_finite(t);
            if nan + inf > 0 {
                bad.push((n.clone(), nan, inf));
            }
        }
    }

    #[cfg(feature = "libtorch")]
    let cross = if args.libtorch { Some(libtorch_side::read(&ck, &tensors)) } else { None };

    if args.json {
        let list: Vec<_> = tensors
            .iter()
            .map(|(n, t)| serde_json::json!({"name": n, "dtype": t.dtype.name(), "shape": t.shape}))
            .collect();
        let mut v = serde_json::json!({
            "path": ck.path,
            "format": ck.format.name(),
            "size": size,
            "sha256": sha,
            "structure": structure(&ck.root, 0),
            "wrapper": wrapper,
            "full_model": ck.full_model(),
            "metadata": ck.metadata,
            "family": det.family,
            "reason": det.reason,
            "config": det.config,
            "tensors": list,
            "totals": {"tensors": tensors.len(), "state_dict_tensors": sd.len(), "numel": total_numel, "bytes": total_bytes},
            "timing_s": {"read": read_s, "sha256": sha_s},
        });
        if args.check_finite {
            v["non_finite"] = serde_json::json!(bad
                .iter()
                .map(|(n, nan, inf)| serde_json::json!({"name": n, "nan": nan, "inf": inf}))
                .collect::<Vec<_>>());
        }
        #[cfg(feature = "libtorch")]
        if let Some(c) = &cross {
            v["libtorch"] = c.to_json();
        }
        println!("{}", json_safe(&serde_json::to_string_pretty(&v)?));
    } else {
        print_table(&args, &ck, sha.as_deref(), size, &tensors, &wrapper, &det, read_s, sha_s);
        if args.check_finite {
            if bad.is_empty() {
                println!("check-finite: every value is finite");
            } else {
                for (n, nan, inf) in &bad {
                    println!("check-finite: {}: {nan} NaN, {inf} Inf", Escaped(n));
                }
            }
        }
        #[cfg(feature = "libtorch")]
        if let Some(c) = &cross {
            c.print();
        }
    }
    #[cfg(feature = "libtorch")]
    let differs = cross.as_ref().is_some_and(|c| !c.agrees());
    #[cfg(not(feature = "libtorch"))]
    let differs = false;
    Ok(if bad.is_empty() && !differs { super::EXIT_OK } else { super::EXIT_CHECK_FAILED })
}

/// `inspect --libtorch` (cargo feature `libtorch`): the file read through PyTorch itself
/// (`comer_port::libtorch`), compared with comer-port's reader; both lists side by side when
/// they differ.
#[cfg(feature = "libtorch")]
mod libtorch_side {
    use comer_port::formats::{Checkpoint, TensorView};
    use comer_port::libtorch::{self, CrossRead, LibtorchError};

    /// What the cross-read found.
    pub enum Outcome {
        /// Both read it; the rows say where they differ.
        Read(CrossRead),
        /// libtorch has no reader for this container.
        NoReader(String),
        /// libtorch could not read a file comer-port read.
        Failed(String),
    }

    pub fn read(ck: &Checkpoint, tensors: &[(String, &TensorView)]) -> Outcome {
        if let Some(what) = ck.full_model() {
            return Outcome::NoReader(comer_port::libtorch::full_model_reason(&what));
        }
        match libtorch::read(&ck.path, ck.format) {
            Ok(theirs) => Outcome::Read(libtorch::cross_read(tensors, &theirs)),
            Err(e @ LibtorchError::NoReader { .. }) => Outcome::NoReader(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    impl Outcome {
        pub fn agrees(&self) -> bool {
            match self {
                Outcome::Read(c) => c.agrees(),
                Outcome::NoReader(_) => true,
                Outcome::Failed(_) => false,
            }
        }

        pub fn to_json(&self) -> serde_json::Value {
            match self {
                Outcome::Read(c) => serde_json::json!({
                    "agrees": c.agrees(),
                    "tensors": c.rows.len(),
                    "first_difference": c.first_difference().map(|(_, r)| r),
                    "rows": if c.agrees() { serde_json::json!([]) } else { serde_json::json!(c.rows) },
                }),
                Outcome::NoReader(why) => serde_json::json!({"agrees": null, "skipped": why}),
                Outcome::Failed(why) => serde_json::json!({"agrees": false, "error": why}),
            }
        }

        pub fn print(&self) {
            println!();
            match self {
                Outcome::Read(c) => print!("{}", c.render()),
                Outcome::NoReader(why) => println!("libtorch   skipped: {why}"),
                Outcome::Failed(why) => println!("libtorch   DIFFERS: {why}"),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    args: &Args,
    ck: &Checkpoint,
    sha: Option<&str>,
    size: u64,
    tensors: &[(String, &TensorView)],
    wrapper: &str,
    det: &Detection,
    read_s: f64,
    sha_s: f64,
) {
    let p: &Path = &ck.path;
    println!("file       {}", EscapedPath(p));
    println!("format     {}", ck.format.name());
    println!("size       {} ({size} bytes)", human(size));
    match sha {
        Some(sha) => println!("sha256     {sha}  ({sha_s:.3} s; object tree read in {read_s:.3} s)"),
        None => println!(
            "sha256     (skipped: input over {} MiB; pass --sha256 to hash it; object tree read in {read_s:.3} s)",
            AUTO_SHA256_MAX >> 20
        ),
    }
    println!("structure  {}", Escaped(&structure(&ck.root, 0)));
    match (ck.full_model(), wrapper.is_empty()) {
        (Some(what), true) => println!("wrapper    (none: {})", Escaped(&what)),
        (Some(what), false) => println!("wrapper    {} ({})", escape(wrapper), Escaped(&what)),
        (None, true) => println!("wrapper    (none: the root is the state dict)"),
        (None, false) => println!("wrapper    {}", escape(wrapper)),
    }
    for (k, v) in &ck.metadata {
        if !k.starts_with("config.") || args.all {
            println!("meta       {} = {}", Escaped(k), Escaped(v));
        }
    }
    println!();
    let rows = rows(tensors, args.all);
    // Names as printed: escaped, so a key cannot move the cursor or fake a line.
    let names: Vec<String> = rows.iter().map(|r| escape(&r.name()).into_owned()).collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).clamp(4, 80);
    println!("{:<w$}  {:<5}  {:<18}  {:>12}  {:>12}", "name", "dtype", "shape", "numel", "bytes");
    for (r, name) in rows.iter().zip(&names) {
        let shape = format!("{:?}", r.shape);
        let mult = if r.indices.len() > 1 { format!(" ×{}", r.indices.len()) } else { String::new() };
        println!("{name:<w$}  {:<5}  {:<18}  {:>12}  {:>12}{mult}", r.dtype, shape, r.numel, r.bytes);
    }
    let numel: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
    let bytes: usize = tensors.iter().map(|(_, t)| t.nbytes()).sum();
    println!("total      {} tensors, {numel} values, {}", tensors.len(), human(bytes as u64));
    println!();
    println!("family     {}", Escaped(det.family));
    println!("reason     {}", Escaped(&det.reason));
    if let Some(c) = &det.config {
        println!(
            "config     embed {} depth {} heads {} patch {} grid {} prefix {} registers {} mlp {}",
            c.embed_dim,
            c.depth,
            c.num_heads,
            c.patch_size,
            c.pretrain_grid.map_or("-".to_string(), |(a, b)| format!("{a}x{b}")),
            c.prefix_tokens,
            c.num_registers,
            c.mlp_hidden
        );
        println!(
            "           qkv {:?} layer-scale {} rel-pos {:?} activation {:?} ln-eps {:e} pre-norm {}{}",
            c.qkv,
            Escaped(c.layer_scale.as_deref().unwrap_or("-")),
            c.rel_pos,
            c.activation,
            c.layernorm_eps,
            Escaped(c.pre_norm.as_deref().unwrap_or("-")),
            if c.assumed.is_empty() { String::new() } else { format!(" (assumed: {})", Escaped(&c.assumed.join(", "))) }
        );
    }
}
