//! Atomic output files: write to a temporary sibling, fsync, rename. A failed or interrupted
//! write leaves no half-written artifact, and an existing file is never replaced unless the
//! caller asked for it (`--force`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The destination exists and `force` was not given.
    #[error("{0}: already exists (pass --force to overwrite)")]
    Exists(PathBuf),
    /// Creating, writing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file being written next to its destination; becomes the destination on [`commit`].
/// Dropped without commit, the temporary file is removed.
///
/// [`commit`]: AtomicFile::commit
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path, force: bool) -> Result<AtomicFile, WriteError> {
        if dest.exists() && !force {
            return Err(WriteError::Exists(dest.to_path_buf()));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| WriteError::Io { path: tmp.clone(), source: e })?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        // Present until commit consumes self.
        self.writer.as_mut().expect("writer present until commit")
    }

    /// Flush, fsync and rename into place.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let io = |path: &Path, e| WriteError::Io { path: path.to_path_buf(), source: e };
        if let Some(w) = self.writer.take() {
            let file = w.into_inner().map_err(|e| io(&self.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| io(&self.dest, e))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_all(dest: &Path, bytes: &[u8], force: bool) -> Result<(), WriteError> {
    let mut f = AtomicFile::create(dest, force)?;
    f.write_all(bytes).map_err(|e| WriteError::Io { path: dest.to_path_buf(), source: e })?;
    f.commit()
}
