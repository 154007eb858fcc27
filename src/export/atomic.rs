//! Atomic output files: write to a temporary sibling, fsync, rename. A failed or interrupted
//! write leaves no half-written artifact, and an existing file is never replaced unless the
//! caller asked for it (`--force`).
//!
//! Large files start their writeback while they are still being written (Linux
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` every [`KICK_EVERY`] bytes), so the final fsync
//! waits for the last stretch only instead of the whole file: the disk works beside the CPU.

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
    /// Bytes written since writeback was last started.
    since_kick: usize,
}

/// Start the writeback of what was written every this many bytes.
pub const KICK_EVERY: usize = 64 << 20;

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
            since_kick: 0,
        })
    }

    /// The temporary file's path (complete once flushed, before [`commit`](Self::commit)).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
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
        let n = self.writer().write(buf)?;
        self.since_kick += n;
        if self.since_kick >= KICK_EVERY {
            self.since_kick = 0;
            self.writer().flush()?;
            start_writeback(self.writer().get_ref());
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.writer().seek(pos)
    }
}

/// Ask the kernel to start writing the file's dirty pages back now, without waiting: an
/// optimisation only, so a failure is ignored (the final fsync reports real I/O errors).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // the lifetime of `file`. offset 0, nbytes 0 means "to the end of the file".
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

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
