//! Atomic output files: write to a temporary sibling, fsync, publish. A failed or
//! interrupted write leaves no half-written artifact, and an existing file is never replaced
//! unless the caller asked for it (`--force`).
//!
//! The temporary file is `.NAME.comer-tmp-PID-RANDOM` beside the destination, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` (a file or symbolic link planted at that name is never opened
//! or followed). Publishing is `renameat2(RENAME_NOREPLACE)` — atomic and race-free: of two
//! processes writing one destination exactly one wins and the other gets
//! [`WriteError::Exists`] — falling back to `link` + `unlink` where the file system lacks
//! it; with `force` a plain `rename` replaces the destination atomically. The file is fsynced
//! before it is published and its folder after. Every error path removes the temporary file;
//! one left by a process that was killed is removed by the next write to the same
//! destination once its PID no longer runs ([`clean_stale`]). No upstream counterpart:
//! `torch.save` and `safetensors` write in place.
//!
//! Large append-only artifacts ([`AtomicFile::create_streaming`]) go to disk with direct
//! I/O where the file system allows it (`direct.rs`); otherwise, and for every other file,
//! writes are buffered and large files start their writeback while they are still being
//! written (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)` every [`KICK_EVERY`] bytes), so the
//! final fsync waits for the last stretch only.

use crate::text::esc;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why an output was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The destination exists and `force` was not given (or another process published it
    /// first).
    #[error("{}: already exists (pass --force to overwrite)", esc(.0))]
    Exists(PathBuf),
    /// Creating, writing or renaming failed (the destination is a folder, the disk is full …).
    #[error("{path}: {source}", path = esc(.path))]
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
    dir: PathBuf,
    tmp: PathBuf,
    force: bool,
    writer: Option<BufWriter<File>>,
    /// Direct-I/O stream in front of `writer` until the first patch or commit.
    direct: Option<super::direct::Direct>,
    /// Bytes written since writeback was last started.
    since_kick: usize,
    /// The temporary file no longer exists under `tmp` (published or removed).
    gone: bool,
}

/// Start the writeback of what was written every this many bytes.
pub const KICK_EVERY: usize = 64 << 20;

/// What every temporary file name holds after `.NAME`: `.NAME.comer-tmp-PID-RANDOM`.
pub const TMP_MARK: &str = ".comer-tmp-";

/// The folder a destination lives in (`.` for a bare file name).
fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 64 unpredictable-enough bits for a temporary name (not a secret: `O_EXCL|O_NOFOLLOW`
/// is what makes planting a file there harmless; the randomness avoids collisions).
fn random_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish()
}

/// Create a new file at `path` for writing: never an existing file, never through a
/// symbolic link.
fn create_new(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC);
    }
    o.open(path)
}

#[cfg(target_os = "linux")]
mod libc_flags {
    pub const NOFOLLOW: i32 = libc::O_NOFOLLOW;
    pub const CLOEXEC: i32 = libc::O_CLOEXEC;
}
#[cfg(all(unix, not(target_os = "linux")))]
mod libc_flags {
    // `create_new` (O_EXCL) already refuses an existing link; no extra flags without libc.
    pub const NOFOLLOW: i32 = 0;
    pub const CLOEXEC: i32 = 0;
}

/// True while a process with this PID exists (a PID that cannot be signalled for lack of
/// permission exists too).
fn pid_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill with signal 0 sends nothing; it only checks that the PID exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        true
    }
}

/// Remove temporary files of earlier writes to `dest` whose process no longer runs
/// (`.NAME.comer-tmp-PID-RANDOM` with a dead PID; regular files only, never followed).
/// Returns how many were removed. Failures are ignored: this is housekeeping.
pub fn clean_stale(dest: &Path) -> usize {
    let dir = parent_dir(dest);
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let prefix = format!(".{name}{TMP_MARK}");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, tag)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), true) = (pid.parse::<u32>(), !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_hexdigit())) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        // `DirEntry::file_type` does not follow links.
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

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
        let dest_io = |e| WriteError::Io { path: dest.to_path_buf(), source: e };
        // A folder is never replaced, forced or not.
        if std::fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
            return Err(dest_io(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder")));
        }
        // Anything at the name (a dangling link included) counts as existing.
        if !force && std::fs::symlink_metadata(dest).is_ok() {
            return Err(WriteError::Exists(dest.to_path_buf()));
        }
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| dest_io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name")))?;
        clean_stale(dest);
        let mut tries = 0;
        let (tmp, file) = loop {
            let tmp = dir.join(format!(".{name}{TMP_MARK}{}-{:016x}", std::process::id(), random_tag()));
            match create_new(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(WriteError::Io { path: tmp, source: e }),
            }
        };
        let mut f = AtomicFile {
            dest: dest.to_path_buf(),
            dir,
            tmp: tmp.clone(),
            force,
            writer: None,
            direct: None,
            since_kick: 0,
            gone: false,
        };
        let io = |e| WriteError::Io { path: tmp.clone(), source: e };
        if streaming && super::direct::enable(&file).map_err(io)? {
            let buffered = file.try_clone().map_err(io)?;
            f.writer = Some(BufWriter::with_capacity(1 << 20, buffered));
            f.direct = Some(super::direct::Direct::new(file).map_err(io)?);
            return Ok(f);
        }
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

    /// Flush, fsync, publish (without replacing an existing destination unless `force`),
    /// fsync the folder. On any error the temporary file is removed.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let r = self.publish();
        if r.is_err() {
            self.remove_tmp();
        }
        r
    }

    fn publish(&mut self) -> Result<(), WriteError> {
        let io = |path: &Path, e| WriteError::Io { path: path.to_path_buf(), source: e };
        self.end_direct().map_err(|e| io(&self.tmp, e))?;
        if let Some(w) = self.writer.take() {
            let file = w.into_inner().map_err(|e| io(&self.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| io(&self.tmp, e))?;
        }
        if self.force {
            std::fs::rename(&self.tmp, &self.dest).map_err(|e| io(&self.dest, e))?;
        } else {
            match rename_noreplace(&self.tmp, &self.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(WriteError::Exists(self.dest.clone()));
                }
                Err(e) => return Err(io(&self.dest, e)),
            }
        }
        self.gone = true;
        // The new name is durable only once the folder is.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io(&self.dir, e))?;
        Ok(())
    }

    /// Remove the temporary file (once).
    fn remove_tmp(&mut self) {
        self.direct = None;
        self.writer = None;
        if !self.gone {
            self.gone = true;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Rename `from` to `to` unless `to` exists (`AlreadyExists` then), atomically:
/// `renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` on file systems without it.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two NUL-terminated paths that outlive the call; renameat2 only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Kernel or file system without renameat2 flags: fall back below.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {}
            _ => return Err(e),
        }
    }
    link_unlink(from, to)
}

/// The portable no-replace publish: a hard link fails if `to` exists; then drop `from`.
fn link_unlink(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
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
        self.remove_tmp();
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_all(dest: &Path, bytes: &[u8], force: bool) -> Result<(), WriteError> {
    let mut f = AtomicFile::create(dest, force)?;
    f.write_all(bytes).map_err(|e| WriteError::Io { path: dest.to_path_buf(), source: e })?;
    f.commit()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("comer-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_planted_name_is_never_opened_or_followed() {
        let d = dir("plant");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        let link = d.join(".out.comer-tmp-1-00");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert!(create_new(&link).is_err(), "a link at the temporary name is refused");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        let dangling = d.join(".out.comer-tmp-1-01");
        std::os::unix::fs::symlink(d.join("created-through-link"), &dangling).expect("symlink");
        assert!(create_new(&dangling).is_err(), "a dangling link is refused");
        assert!(!d.join("created-through-link").exists());
        std::fs::write(d.join("plain"), b"x").expect("write");
        assert_eq!(create_new(&d.join("plain")).expect_err("exists").kind(), std::io::ErrorKind::AlreadyExists);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rename_noreplace_and_its_fallback_refuse_an_existing_destination() {
        let d = dir("noreplace");
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, b"new").expect("write");
        std::fs::write(&b, b"old").expect("write");
        assert_eq!(rename_noreplace(&a, &b).expect_err("exists").kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(link_unlink(&a, &b).expect_err("exists").kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).expect("read"), b"old");
        assert!(a.exists(), "the source stays when nothing was published");
        std::fs::remove_file(&b).expect("rm");
        rename_noreplace(&a, &b).expect("free name");
        assert!(!a.exists());
        std::fs::write(&a, b"again").expect("write");
        let c = d.join("c");
        link_unlink(&a, &c).expect("fallback publishes");
        assert!(!a.exists());
        assert_eq!(std::fs::read(&c).expect("read"), b"again");
        let _ = std::fs::remove_dir_all(&d);
    }
}
