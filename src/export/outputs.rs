//! `export/outputs.rs`: every file a command is about to write, checked against each other
//! and against everything it reads, before the first byte is written. Two outputs naming one
//! file (`-o X --pth X`, `--report` naming the artifact, a `.pth` named like the config
//! written beside the artifact) would leave the first overwritten by the second or stop
//! half way; an output naming an input (`-o SRC`, `--report SRC`, `run -o WEIGHTS`) or
//! inside an input folder (an import writing `config.json` into the Hugging Face folder it
//! reads) would destroy what is being read — `--force` included. Both are refused as usage
//! errors naming both roles.
//!
//! "The same file" is decided three ways: the same path once made absolute with its folder
//! resolved (`./a`, `d/../a` and a symlinked folder name one file), the same device and inode
//! when both exist (a hard link, or a symbolic link to the other, followed), and — for an
//! input folder — an output whose resolved folder is inside it. No upstream counterpart.

use std::path::{Component, Path, PathBuf};

use crate::text::EscapedPath;

/// Why a set of outputs is refused.
#[derive(Debug, thiserror::Error)]
pub enum CollisionError {
    /// Two outputs are one file.
    #[error("{role} {path} is also {other}{how}: give each output its own name", path = EscapedPath(.path))]
    Outputs {
        /// The later output's role (`the --pth output`, `the text summary of --report`, …).
        role: String,
        /// The later output.
        path: PathBuf,
        /// The earlier output's role.
        other: String,
        /// How they are one file (empty for the same path, else which link).
        how: String,
    },
    /// An output is one of the command's inputs.
    #[error(
        "{role} {path} is {input}{how}: comer-port never writes over a file it reads, not even with --force; \
         choose another name",
        path = EscapedPath(.path)
    )]
    Input {
        /// The output's role.
        role: String,
        /// The output.
        path: PathBuf,
        /// The input's role (`the source`, `the --weights file`, …).
        input: String,
        /// How they are one file (empty for the same path, else which link).
        how: String,
    },
    /// An output is inside a folder the command reads (a Hugging Face model folder).
    #[error(
        "{role} {path} is inside {input} {folder}: comer-port never writes into a folder it reads, not even with \
         --force; write it elsewhere",
        path = EscapedPath(.path),
        folder = EscapedPath(.folder)
    )]
    InsideInput {
        /// The output's role.
        role: String,
        /// The output.
        path: PathBuf,
        /// The input's role.
        input: String,
        /// The input folder.
        folder: PathBuf,
    },
}

/// A path as compared here: absolute with `.`/`..` resolved and its folder's symbolic links
/// resolved when the folder exists, and the (device, inode) of what it names when that exists
/// (links followed).
struct Resolved {
    path: PathBuf,
    id: Option<(u64, u64)>,
    is_dir: bool,
}

/// `p` absolute (against the current folder).
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) }
}

/// `p` with `.` and `..` resolved by name (for a folder that does not exist, where the
/// system cannot resolve it).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The device and inode of what `p` names (links followed), when it exists.
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

fn resolve(p: &Path) -> Resolved {
    let meta = std::fs::metadata(p).ok();
    let abs = absolute(p);
    // The folder's real name (its links and `..` resolved by the system), the file name as
    // given: the file itself may not exist yet, or be a link that the writer replaces rather
    // than follows.
    let path = match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => lexical(&abs),
    };
    Resolved {
        path,
        id: meta.as_ref().and_then(file_id),
        is_dir: meta.is_some_and(|m| m.is_dir()),
    }
}

/// How `a` and `b` are one file: `Some("")` for the same path, `Some(" (the same file through
/// a link)")` for the same device and inode, `None` when they are two files.
fn same(a: &Resolved, b: &Resolved) -> Option<&'static str> {
    if a.path == b.path {
        return Some("");
    }
    match (a.id, b.id) {
        (Some(x), Some(y)) if x == y => Some(" (the same file through a hard or symbolic link)"),
        _ => None,
    }
}

/// Refuse `outputs` (role, path) — in the order they are written — when two of them are one
/// file, when one is one of `inputs` (role, path), or when one is inside an input folder.
/// Roles are noun phrases that read in the messages as subject and object: `the -o output`,
/// `the text summary of --report`; `the source`, `the --weights file`.
/// Nothing is created or written; only `stat` and `realpath` of the folders.
pub fn check(outputs: &[(String, PathBuf)], inputs: &[(String, PathBuf)]) -> Result<(), CollisionError> {
    let outs: Vec<Resolved> = outputs.iter().map(|(_, p)| resolve(p)).collect();
    let ins: Vec<(Resolved, Option<PathBuf>)> = inputs
        .iter()
        .map(|(_, p)| {
            let r = resolve(p);
            let folder = if r.is_dir { std::fs::canonicalize(p).ok() } else { None };
            (r, folder)
        })
        .collect();
    for (j, (role, path)) in outputs.iter().enumerate() {
        for ((input, _), (r, folder)) in inputs.iter().zip(&ins) {
            if let Some(how) = same(&outs[j], r) {
                return Err(CollisionError::Input { role: role.clone(), path: path.clone(), input: input.clone(), how: how.into() });
            }
            if let Some(folder) = folder
                && outs[j].path.starts_with(folder)
            {
                return Err(CollisionError::InsideInput {
                    role: role.clone(),
                    path: path.clone(),
                    input: input.clone(),
                    folder: folder.clone(),
                });
            }
        }
        for (i, (other, _)) in outputs.iter().enumerate().take(j) {
            if let Some(how) = same(&outs[j], &outs[i]) {
                return Err(CollisionError::Outputs { role: role.clone(), path: path.clone(), other: other.clone(), how: how.into() });
            }
        }
    }
    Ok(())
}

/// `(role, path)` pairs from borrowed parts, for [`check`].
pub fn roles<'a>(items: impl IntoIterator<Item = (&'a str, Option<&'a Path>)>) -> Vec<(String, PathBuf)> {
    items.into_iter().filter_map(|(r, p)| p.map(|p| (r.to_string(), p.to_path_buf()))).collect()
}

#[cfg(all(test, unix))]
mod tests {
    //! One test per [`CollisionError`] variant, matching the variant.
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("comer-outputs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn pair(role: &str, p: &Path) -> (String, PathBuf) {
        (role.to_string(), p.to_path_buf())
    }

    #[test]
    fn outputs() {
        let d = dir("outputs");
        let x = d.join("x.safetensors");
        let (o, pth) = ("the -o output", "the --pth output");
        let e = check(&[pair(o, &x), pair(pth, &d.join("sub/../x.safetensors"))], &[]).expect_err("same path");
        assert!(matches!(e, CollisionError::Outputs { ref role, ref other, .. } if role == pth && other == o), "{e}");
        assert!(e.to_string().starts_with("the --pth output ") && e.to_string().contains("is also the -o output"), "{e}");
        // An existing hard link and a symbolic link name the file they point to.
        std::fs::write(&x, b"x").expect("write");
        std::fs::hard_link(&x, d.join("hard")).expect("link");
        std::os::unix::fs::symlink(&x, d.join("soft")).expect("symlink");
        for other in ["hard", "soft"] {
            let e = check(&[pair(o, &x), pair("the --report output", &d.join(other))], &[]).expect_err(other);
            assert!(matches!(e, CollisionError::Outputs { .. }) && e.to_string().contains("link"), "{e}");
        }
        assert!(check(&[pair(o, &x), pair(pth, &d.join("x.pth"))], &[]).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn input() {
        let d = dir("input");
        let src = d.join("src.pth");
        std::fs::write(&src, b"s").expect("write");
        std::fs::hard_link(&src, d.join("hard.pth")).expect("link");
        for out in [src.clone(), d.join("./src.pth"), d.join("hard.pth")] {
            let e = check(&[pair("the -o output", &out)], &[pair("the source", &src)]).expect_err("the source");
            assert!(matches!(e, CollisionError::Input { .. }), "{e}");
            assert!(e.to_string().contains("is the source") && e.to_string().contains("--force"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn inside_input() {
        let d = dir("inside");
        let hf = d.join("hf");
        std::fs::create_dir_all(&hf).expect("dir");
        std::os::unix::fs::symlink(&hf, d.join("alias")).expect("symlink");
        for out in [hf.join("config.json"), d.join("alias/model.safetensors")] {
            let e = check(&[pair("the -o output", &out)], &[pair("the source", &hf)]).expect_err("inside");
            assert!(matches!(e, CollisionError::InsideInput { .. }), "{e}");
        }
        assert!(check(&[pair("the -o output", &d.join("out.safetensors"))], &[pair("the source", &hf)]).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
