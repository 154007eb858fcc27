//! Atomic output files: write to a temporary sibling, fsync, rename. A failed or interrupted
//! write leaves no half-written artifact, and an existing file is never replaced unless the
//! caller asked for it (`--force`).
//!
//! Large append-only artifacts ([`AtomicFile::create_streaming`]) go to disk with direct
//! I/O where the file system allows it (`direct.rs`); otherwise, and for every other file,
//! writes are buffered and large files start their writeback while they are still being
//! written (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)` every [`KICK_EVERY`] bytes), so the
//! final fsync waits for the last stretch only.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why an output was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The destination exists and `force` was not given.
    #[error("{0}: already exists (pass --force to overwrite)")]
    Exists(PathBuf),
    /// Creating, writing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed (the temporary file while writing, the destination on rename).
        path: PathBuf,
        /// What the operating system reported.
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
    /// Direct-I/O stream in front of `writer` until the first patch or commit.
    direct: Option<super::direct::Direct>,
    /// Bytes written since writeback was last started.
    since_kick: usize,
}

/// Start the writeback of what was written every this many bytes.
pub const KICK_EVERY: usize = 64 << 20;

impl AtomicFile {
    /// Start writing `dest` through a temporary file beside it; refused when `dest` exists
    /// and `force` is not given.
    pub fn create(dest: &Path, force: bool) -> Result<AtomicFile, WriteError> {
        Self::open(dest, force, false)
    }

    /// As [`create`](Self::create), for a large file written front to back: direct I/O
    /// where the file system supports it. Seek is unavailable until [`patch`](Self::patch).
    pub fn create_streaming(dest: &Path, force: bool) -> Result<AtomicFile, WriteError> {
        Self::open(dest, force, true)
    }

    fn open(dest: &Path, force: bool, streaming: bool) -> Result<AtomicFile, WriteError> {
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
        let io = |e| WriteError::Io { path: tmp.clone(), source: e };
        let mut f = AtomicFile { dest: dest.to_path_buf(), tmp: tmp.clone(), writer: None, direct: None, since_kick: 0 };
        if streaming && let Some(file) = super::direct::create(&tmp).map_err(io)? {
            let buffered = file.try_clone().map_err(io)?;
            f.writer = Some(BufWriter::with_capacity(1 << 20, buffered));
            f.direct = Some(super::direct::Direct::new(file).map_err(io)?);
            return Ok(f);
        }
        let file = File::create(&tmp).map_err(io)?;
        f.writer = Some(BufWriter::with_capacity(1 << 20, file));
        Ok(f)
    }

    /// End the direct-I/O stream (if any): later writes are buffered and may seek.
    fn end_direct(&mut self) -> std::io::Result<()> {
        if let Some(d) = self.direct.take() {
            let (_, len) = d.finish()?;
            // The buffered handle shares the file; put it at the end of what was streamed.
            use std::io::Seek;
            self.writer().seek(std::io::SeekFrom::Start(len))?;
        }
        Ok(())
    }

    /// Overwrite `bytes` at offset `at` (ends a direct-I/O stream first), then continue at
    /// the end of the file.
    pub fn patch(&mut self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.end_direct()?;
        let w = self.writer();
        w.seek(SeekFrom::Start(at))?;
        w.write_all(bytes)?;
        w.seek(SeekFrom::End(0))?;
        Ok(())
    }

    /// The temporary file's path (complete once flushed, before [`commit`](Self::commit)).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The buffered handle of the temporary file (bypasses a direct-I/O stream: internal).
    fn writer(&mut self) -> &mut BufWriter<File> {
        // Present until commit consumes self.
        self.writer.as_mut().expect("writer present until commit")
    }

    /// Flush, fsync and rename into place.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let io = |path: &Path, e| WriteError::Io { path: path.to_path_buf(), source: e };
        self.end_direct().map_err(|e| io(&self.tmp, e))?;
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
        if let Some(d) = self.direct.as_mut() {
            d.write_all(buf)?;
            return Ok(buf.len());
        }
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
        self.end_direct()?;
        self.writer().flush()
    }
}

impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.end_direct()?;
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
        self.direct = None;
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
