//! Hugging Face model folders: `model.safetensors`, `pytorch_model.bin`, or sharded
//! checkpoints with a `*.index.json` weight map; `config.json` read as metadata.
//!
//! Mirrors `transformers/modeling_utils.py` (`PreTrainedModel.from_pretrained`: safetensors
//! preferred over `.bin`, `load_sharded_checkpoint` reading `weight_map`). Shard names from
//! an index must be plain file names inside the folder (no `/`, no `..`). Every file read
//! (config, index, shards) must be a regular file; a symbolic link is followed only when it
//! stays inside the folder, or — the Hugging Face hub cache layout,
//! `models--org--name/snapshots/<rev>/file -> ../../blobs/<sha>` — inside that repository's
//! `blobs/` folder.

use super::{Checkpoint, Format, FormatError, ReadLimits, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `config.json` / index file read.
pub const MAX_JSON: u64 = 16 << 20;
/// Most shards an index may name.
pub const MAX_SHARDS: usize = 4096;

/// Check that `p`, a file named inside the model folder `dir`, may be read: a symbolic link
/// must resolve inside `dir` (or, in the hub cache layout, inside the repository's `blobs/`),
/// and the file it names must be a regular file. Never opens anything.
fn confined(dir: &Path, p: &Path) -> Result<(), FormatError> {
    let lmeta = std::fs::symlink_metadata(p).map_err(|e| FormatError::io(p, e))?;
    if lmeta.file_type().is_symlink() {
        let target = std::fs::canonicalize(p).map_err(|e| FormatError::io(p, e))?;
        let cdir = std::fs::canonicalize(dir).map_err(|e| FormatError::io(dir, e))?;
        let hub_blobs = hub_blobs(&cdir);
        let inside = target.starts_with(&cdir) || hub_blobs.is_some_and(|b| target.starts_with(b));
        if !inside {
            return Err(FormatError::SymlinkEscape {
                path: p.to_path_buf(),
                target,
            });
        }
    }
    let meta = std::fs::metadata(p).map_err(|e| FormatError::io(p, e))?;
    if !meta.is_file() {
        return Err(FormatError::NotAFile {
            path: p.to_path_buf(),
            kind: super::kind_of(&meta.file_type()),
        });
    }
    Ok(())
}

/// `…/models--org--name/blobs` when `cdir` (canonical) is `…/models--org--name/snapshots/<rev>`.
fn hub_blobs(cdir: &Path) -> Option<PathBuf> {
    let snapshots = cdir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let blobs = snapshots.parent()?.join("blobs");
    blobs.is_dir().then_some(blobs)
}

fn read_json(dir: &Path, path: &Path) -> Result<serde_json::Value, FormatError> {
    confined(dir, path)?;
    let file = super::open_regular(path)?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len > MAX_JSON {
        return Err(FormatError::TooLarge {
            path: path.to_path_buf(),
            entry: "json".into(),
            claimed: len,
            limit: MAX_JSON,
        });
    }
    let mut text = String::new();
    // Never more than the cap, whatever the file grows to while it is read.
    file.take(MAX_JSON + 1).read_to_string(&mut text).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| FormatError::corrupt(path, "json", e.to_string()))
}

/// Flatten `config.json`'s top-level scalars as `config.<key>` = text.
fn config_metadata(cfg: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    if let serde_json::Value::Object(m) = cfg {
        for (k, v) in m {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => "null".into(),
                other => other.to_string(),
            };
            out.insert(format!("config.{k}"), text);
        }
    }
}

/// True when something (a file, link, FIFO …) exists at `p`, without following links.
fn present(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// [`read`] under `limits` (each shard is read under them).
pub fn read_with(dir: &Path, limits: &ReadLimits) -> Result<Checkpoint, FormatError> {
    let mut metadata = BTreeMap::new();
    let cfg = dir.join("config.json");
    if present(&cfg) {
        config_metadata(&read_json(dir, &cfg)?, &mut metadata);
    }
    let candidates = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        // open_clip's hub folders (`open_clip.push_to_hf_hub`), beside `open_clip_config.json`.
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ];
    let found = candidates
        .iter()
        .find(|c| present(&dir.join(c)))
        .ok_or_else(|| {
            FormatError::missing(
                dir,
                "model.safetensors / pytorch_model.bin (or a sharded index, or open_clip's open_clip_model.safetensors); \
                 give the checkpoint file itself, or the Hugging Face model folder that holds one",
            )
        })?;
    let files: Vec<String> = if found.ends_with(".index.json") {
        let idx_path = dir.join(found);
        let idx = read_json(dir, &idx_path)?;
        let map = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| FormatError::corrupt(&idx_path, "weight_map", "missing or not an object"))?;
        let mut shards: Vec<String> = Vec::new();
        for v in map.values() {
            let s = v
                .as_str()
                .ok_or_else(|| FormatError::corrupt(&idx_path, "weight_map", "a shard name is not a string"))?;
            if s.is_empty() || s.contains('/') || s.contains('\\') || s == "." || s == ".." {
                return Err(FormatError::UnsafeEntryName {
                    path: idx_path.clone(),
                    entry: s.to_string(),
                });
            }
            if !shards.iter().any(|x| x == s) {
                shards.push(s.to_string());
            }
            if shards.len() > MAX_SHARDS {
                return Err(FormatError::corrupt(&idx_path, "weight_map", format!("more than {MAX_SHARDS} shards")));
            }
        }
        shards.sort();
        metadata.insert("index".into(), found.to_string());
        shards
    } else {
        vec![found.to_string()]
    };
    let mut items: Vec<(Value, Value)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let p = dir.join(f);
        if !present(&p) {
            return Err(FormatError::missing(dir, f.clone()));
        }
        confined(dir, &p)?;
        // Inflated records stay alive across shards: the folder shares one inflate budget's
        // slack (4 × each shard + 1 MiB over all shards), so thousands of tiny shards cannot
        // each claim the full slack.
        let mut shard_limits = *limits;
        if limits.inflate_bytes.is_none() && files.len() > 1 {
            let len = std::fs::metadata(&p).map_err(|e| FormatError::io(&p, e))?.len();
            let slack = super::zip::INFLATE_SLACK / files.len() as u64;
            shard_limits.inflate_bytes = Some(len.saturating_mul(super::zip::INFLATE_RATIO).saturating_add(slack));
        }
        let ck = super::open_file_with(&p, &shard_limits)?;
        for (k, v) in &ck.metadata {
            metadata.entry(format!("{f}:{k}")).or_insert_with(|| v.clone());
        }
        let (_, tensors) = ck.state_dict();
        for (name, t) in tensors {
            if !seen.insert(name.clone()) {
                return Err(FormatError::DuplicateKey {
                    path: dir.to_path_buf(),
                    entry: f.clone(),
                    key: name,
                });
            }
            items.push((Value::Str(name), Value::Tensor(t.clone())));
        }
    }
    metadata.insert("files".into(), files.join(","));
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format: Format::HfFolder,
        root: Value::Dict(items),
        metadata,
    })
}

/// open_clip's model config beside a checkpoint (`open_clip_config.json` in the folder, or
/// beside the file), as `push_to_hf_hub` writes it: `{"model_cfg": {..., "quick_gelu": true}}`.
pub const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";

/// The activation open_clip's config names for the model at `path` (a folder, or a file
/// whose folder holds the config): `Some(true)` for `model_cfg.quick_gelu: true` (QuickGELU),
/// `Some(false)` when it is false or absent (open_clip builds `nn.GELU` then), `None` when
/// there is no such config. The config is read like `config.json` (regular file, size cap,
/// links confined to the folder); a malformed one is an error naming it.
pub fn open_clip_quick_gelu(path: &Path) -> Result<Option<(bool, PathBuf)>, FormatError> {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let cfg = dir.join(OPEN_CLIP_CONFIG);
    if !present(&cfg) {
        return Ok(None);
    }
    let v = read_json(&dir, &cfg)?;
    let model_cfg = v
        .get("model_cfg")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FormatError::corrupt(&cfg, "model_cfg", "missing or not an object (open_clip writes {\"model_cfg\": {...}})"))?;
    match model_cfg.get("quick_gelu") {
        None => Ok(Some((false, cfg))),
        Some(serde_json::Value::Bool(b)) => Ok(Some((*b, cfg))),
        Some(other) => Err(FormatError::corrupt(&cfg, "model_cfg.quick_gelu", format!("{other} is not true or false"))),
    }
}
