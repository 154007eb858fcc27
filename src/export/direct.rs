//! Direct-I/O streaming for large artifacts (Linux `O_DIRECT`): bytes are gathered into
//! page-aligned 32 MiB chunks that a writer thread sends straight to the disk while the next
//! chunk fills, bypassing the page cache. Writing a 1.7 GB safetensors file this way costs
//! no page-cache copy and no writeback work on the two cores, which on the machines we
//! measured is most of what a buffered write plus fsync costs (docs/performance.md).
//!
//! The stream is append-only. [`Direct::finish`] writes the last chunk padded to the block
//! alignment, waits for the writer, cuts the padding with `set_len` and clears `O_DIRECT`, so
//! the caller can patch bytes in place (the safetensors header's late values) with ordinary
//! buffered writes before fsync and rename. No upstream counterpart: torch.save and
//! safetensors write through the page cache.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// File offsets, lengths and buffer addresses of `O_DIRECT` writes are multiples of this.
pub const ALIGN: usize = 4096;
/// Bytes per write.
pub const CHUNK: usize = 32 << 20;

/// An `O_DIRECT` file being streamed by a writer thread (double-buffered).
pub struct Direct {
    file: File,
    /// The chunk being filled (page-aligned: an anonymous map).
    buf: memmap2::MmapMut,
    filled: usize,
    /// Bytes handed to the writer so far.
    shipped: u64,
    to_writer: Option<mpsc::SyncSender<(memmap2::MmapMut, usize)>>,
    back: mpsc::Receiver<memmap2::MmapMut>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Switch `file` (just created, empty) to direct I/O. `Ok(false)` when the file system
/// refuses `O_DIRECT` (tmpfs, some network file systems): the caller writes buffered instead.
/// The file is created by the caller (`atomic.rs`: `O_EXCL|O_NOFOLLOW`), never here.
#[cfg(target_os = "linux")]
pub fn enable(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor owned by `file`, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINVAL) { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
pub fn enable(_file: &File) -> io::Result<bool> {
    Ok(false)
}

impl Direct {
    /// Start streaming into `file` (switched to direct I/O by [`enable`]).
    pub fn new(file: File) -> io::Result<Direct> {
        let mut out = file.try_clone()?;
        let (to_writer, jobs) = mpsc::sync_channel::<(memmap2::MmapMut, usize)>(1);
        let (give_back, back) = mpsc::channel::<memmap2::MmapMut>();
        give_back.send(memmap2::MmapMut::map_anon(CHUNK)?).map_err(|_| io::Error::other("writer channel closed"))?;
        let thread = std::thread::spawn(move || -> io::Result<()> {
            for (buf, len) in jobs {
                out.write_all(&buf[..len])?;
                // The filler may already have finished; a closed channel is fine then.
                let _ = give_back.send(buf);
            }
            Ok(())
        });
        Ok(Direct {
            file,
            buf: memmap2::MmapMut::map_anon(CHUNK)?,
            filled: 0,
            shipped: 0,
            to_writer: Some(to_writer),
            back,
            thread: Some(thread),
        })
    }

    /// Append `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (CHUNK - self.filled).min(data.len());
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == CHUNK {
                self.ship(CHUNK)?;
            }
        }
        Ok(())
    }

    /// Hand the current chunk (its first `len` bytes, a multiple of [`ALIGN`]) to the writer
    /// and continue in the buffer it gives back.
    fn ship(&mut self, len: usize) -> io::Result<()> {
        let next = match self.back.recv() {
            Ok(b) => b,
            Err(_) => return Err(self.writer_error()),
        };
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.to_writer.as_ref().map(|t| t.send((full, len)).is_ok()).unwrap_or(false);
        if !sent {
            return Err(self.writer_error());
        }
        self.shipped += len as u64;
        self.filled = 0;
        Ok(())
    }

    /// The writer thread's error (it stopped early).
    fn writer_error(&mut self) -> io::Error {
        self.to_writer = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the direct-I/O writer stopped"),
        }
    }

    /// Write what is left, wait for the disk, cut the alignment padding and switch the file
    /// back to buffered I/O. Returns the file and its length.
    pub fn finish(mut self) -> io::Result<(File, u64)> {
        let total = self.shipped + self.filled as u64;
        let padded = self.filled.div_ceil(ALIGN) * ALIGN;
        if padded > 0 {
            self.buf[self.filled..padded].fill(0);
            self.ship(padded)?;
        }
        self.to_writer = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(_)) => return Err(io::Error::other("the direct-I/O writer panicked")),
        }
        self.file.set_len(total)?;
        clear_direct(&self.file)?;
        let file = self.file.try_clone()?;
        Ok((file, total))
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Clear `O_DIRECT` so later (unaligned) patches go through the page cache.
#[cfg(target_os = "linux")]
fn clear_direct(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor owned by `file`, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn clear_direct(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn streams_any_length_and_patches_in_place() {
        let dir = std::env::temp_dir().join(format!("comer-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("x.bin");
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).expect("open");
        if !enable(&file).expect("fcntl") {
            // This file system has no O_DIRECT: nothing to test here.
            return;
        }
        let mut d = Direct::new(file).expect("direct");
        let mut want = Vec::new();
        for i in 0..40usize {
            // Odd sizes straddle chunk boundaries; one is bigger than a chunk.
            let n = if i == 7 { CHUNK + 12_345 } else { 1_000_003 + i * 17 };
            let part: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
            d.write_all(&part).expect("write");
            want.extend_from_slice(&part);
        }
        let (file, len) = d.finish().expect("finish");
        assert_eq!(len, want.len() as u64);
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"HEAD", 3).expect("unaligned patch after finish");
        want[3..7].copy_from_slice(b"HEAD");
        drop(file);
        assert_eq!(std::fs::read(&path).expect("read"), want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
