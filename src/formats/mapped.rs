//! Memory-mapped files and the checkpoint hash. Every file the crate maps is mapped here
//! ([`map_file`]): the readers' storage, `verify`'s reference side of a round trip, the hash.
//!
//! The hash is `sha256sum`'s (lowercase hex) for a file; for a folder (a Hugging Face model
//! folder) it is the SHA-256 of its regular files' bytes concatenated in file-name order —
//! what `inspect` prints and `import` records as `comer_port.source_sha256`.

use std::path::{Path, PathBuf};

/// A read-only memory map of a whole file: its bytes, paged in on demand.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
}

/// Map `path` read-only (a regular file only: FIFOs, devices and sockets are refused without
/// blocking, see [`super::open_regular`]).
pub fn map_file(path: &Path) -> std::io::Result<MappedFile> {
    let file = super::open_regular(path).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    MappedFile::of(&file)
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl MappedFile {
    /// Map an open file read-only.
    pub fn of(file: &std::fs::File) -> std::io::Result<MappedFile> {
        // SAFETY: the map is read-only and this process never writes the file; a file
        // truncated or rewritten under us by another process is the hazard every mmap-based
        // reader (safetensors, candle) accepts (docs/guarantees.md).
        let map = unsafe { memmap2::Mmap::map(file) }?;
        Ok(MappedFile { map })
    }

    /// Drop this process's page-table entries for bytes `start..start+len` (clamped to the
    /// file), so what was read once stops counting in the resident set; the bytes stay in the
    /// page cache and read back unchanged on the next access.
    pub fn release_range(&self, start: usize, len: usize) {
        if start >= self.map.len() {
            return;
        }
        let len = len.min(self.map.len() - start);
        // SAFETY: a read-only shared file mapping (`Mmap::map`), never written through;
        // MADV_DONTNEED on it only unmaps pages, and a later read faults the same file bytes
        // back in, so every outstanding `&[u8]` into it stays valid and unchanged.
        #[cfg(unix)]
        unsafe {
            let _ = self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = len;
    }

    /// [`release_range`](Self::release_range) for `part`, a slice of this map (anything
    /// else is ignored).
    pub fn release(&self, part: &[u8]) {
        let (base, at) = (self.map.as_ptr() as usize, part.as_ptr() as usize);
        if at >= base && at - base <= self.map.len() {
            self.release_range(at - base, part.len());
        }
    }
}

/// The files whose bytes make up the checkpoint at `path`, in hashing order: the file
/// itself, or a folder's regular files (symlinks followed) sorted by name.
pub fn checkpoint_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// SHA-256 (lowercase hex) of the checkpoint at `path`: a file, or a folder's
/// [`checkpoint_files`] concatenated. Read through a map, 64 MiB at a time, each stretch
/// dropped from the resident set once hashed; a read error is an error, never a wrong hash.
pub fn sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    const STEP: usize = 64 << 20;
    let mut h = sha2::Sha256::new();
    for f in checkpoint_files(path)? {
        if std::fs::metadata(&f)?.len() == 0 {
            continue;
        }
        let map = map_file(&f)?;
        for start in (0..map.len()).step_by(STEP) {
            let end = (start + STEP).min(map.len());
            h.update(&map[start..end]);
            map.release_range(start, end - start);
        }
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 (lowercase hex) of a checkpoint held in memory: what [`sha256`] gives for a file
/// holding these bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_folder_and_bytes_agree() {
        let dir = std::env::temp_dir().join(format!("comer-port-mapped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        std::fs::write(dir.join("b.bin"), b"world").expect("b");
        std::fs::write(dir.join("a.json"), b"hello ").expect("a");
        std::fs::write(dir.join("empty"), b"").expect("empty");
        std::fs::write(dir.join("sub/ignored"), b"x").expect("sub");
        // sha256("hello world")
        let want = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        assert_eq!(sha256(&dir).expect("folder"), want);
        assert_eq!(sha256_bytes(b"hello world"), want);
        assert_eq!(sha256(&dir.join("a.json")).expect("file"), sha256_bytes(b"hello "));
        let names: Vec<_> = checkpoint_files(&dir).expect("files").iter().filter_map(|p| p.file_name().map(|n| n.to_owned())).collect();
        assert_eq!(names, ["a.json", "b.bin", "empty"]);
        let map = map_file(&dir.join("b.bin")).expect("map");
        assert_eq!(&map[..], b"world");
        map.release(&map[1..3]);
        map.release(b"elsewhere");
        assert_eq!(&map[..], b"world");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
