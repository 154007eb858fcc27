//! A minimal, strict zip reader for checkpoint archives: the central directory, local
//! headers, stored members as slices of the memory map and deflated members decompressed
//! under a size cap.
//!
//! Mirrors what PyTorch's `caffe2/serialize/inline_container.cc` (`PyTorchStreamReader`)
//! and numpy's `np.load` (via Python's `zipfile`) accept: `torch.save` stores every record
//! uncompressed (and 64-byte aligned), so those are mapped without a copy; `.npz` members may
//! be deflated, and are decompressed under one budget for the whole archive (a small
//! multiple of the file size), so a deflate bomb never allocates what it claims. Members
//! whose bytes overlap (many directory entries sharing one deflate stream) and names listed
//! twice are refused; entry names with `..`, absolute paths or backslashes are refused.
//! Every member that is read is CRC-checked, whatever its size: deflated members while they
//! inflate, stored (mapped) members over the mapped bytes when first used.

use super::FormatError;
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Most central-directory entries an archive may list.
pub const MAX_ENTRIES: usize = 1 << 20;
/// The deflated members of an archive may expand, all together, to at most this many times
/// the archive size …
pub const INFLATE_RATIO: u64 = 4;
/// … plus this many bytes (the default of [`super::ReadLimits::inflate_bytes`]).
pub const INFLATE_SLACK: u64 = 1 << 20;
/// Stored members are CRC-checked this many bytes at a time (each stretch dropped from the
/// resident set once checked, and the stretches of a large member checked on all cores).
pub const CRC_CHUNK: usize = 16 << 20;

/// How a member's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflated,
}

/// One member of the archive.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub method: Method,
    pub crc: u32,
    pub compressed: u64,
    pub size: u64,
    /// Offset of the member's data (after its local header) in the file.
    pub data_start: u64,
    /// Offset of the member's local header in the file.
    pub local_start: u64,
}


/// The parsed directory of a zip archive held in `bytes`.
pub struct Archive<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub members: Vec<Member>,
    /// Member name → position in `members` (names are unique: checked in `parse`).
    index: HashMap<String, usize>,
    /// Bytes all deflated members may inflate to, together.
    inflate_limit: u64,
    /// Bytes inflated (or reserved for inflating) so far.
    inflated: Cell<u64>,
}

/// The default inflate budget of an archive of `len` bytes.
pub fn default_inflate_limit(len: u64) -> u64 {
    len.saturating_mul(INFLATE_RATIO).saturating_add(INFLATE_SLACK)
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}
fn rd32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn rd64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// True when the bytes start like a zip archive (local file header or empty-archive EOCD).
pub fn looks_like_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

/// A safe relative entry name: no `..` component, not absolute, no backslash or NUL.
pub fn safe_name(name: &str) -> bool {
    let drive_letter = name.len() >= 2 && name.as_bytes()[1] == b':';
    let unsafe_char = name.contains('\\') || name.contains('\0');
    !(name.is_empty() || name.starts_with('/') || unsafe_char || drive_letter || name.split('/').any(|c| c == ".."))
}

impl<'a> Archive<'a> {
    /// Parse the end-of-central-directory record (zip64 too) and every central entry.
    pub fn parse(path: &'a Path, bytes: &'a [u8]) -> Result<Archive<'a>, FormatError> {
        let corrupt = |reason: String| FormatError::corrupt(path, "zip", reason);
        let trunc = || corrupt("truncated central directory".into());
        // EOCD: 22 bytes + comment (≤ 65535), searched backwards.
        if bytes.len() < 22 {
            return Err(corrupt("no end-of-central-directory record (file too short)".into()));
        }
        let lo = bytes.len().saturating_sub(22 + 65535);
        let eocd = (lo..=bytes.len() - 22)
            .rev()
            .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))
            .ok_or_else(|| corrupt("no end-of-central-directory record".into()))?;
        let mut count = rd16(bytes, eocd + 10).ok_or_else(trunc)? as u64;
        let mut cd_size = rd32(bytes, eocd + 12).ok_or_else(trunc)? as u64;
        let mut cd_off = rd32(bytes, eocd + 16).ok_or_else(trunc)? as u64;
        if (count == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff) && eocd >= 20 {
            // zip64 locator just before the EOCD.
            let loc = eocd - 20;
            if rd32(bytes, loc) == Some(0x0706_4b50) {
                let z64 = rd64(bytes, loc + 8).ok_or_else(trunc)?;
                let z64 = usize::try_from(z64).map_err(|_| trunc())?;
                if rd32(bytes, z64) != Some(0x0606_4b50) {
                    return Err(corrupt("bad zip64 end-of-central-directory record".into()));
                }
                count = rd64(bytes, z64 + 32).ok_or_else(trunc)?;
                cd_size = rd64(bytes, z64 + 40).ok_or_else(trunc)?;
                cd_off = rd64(bytes, z64 + 48).ok_or_else(trunc)?;
            }
        }
        if count > MAX_ENTRIES as u64 {
            return Err(corrupt(format!("{count} entries (limit {MAX_ENTRIES})")));
        }
        let cd_end = cd_off.checked_add(cd_size).ok_or_else(trunc)?;
        if cd_end > bytes.len() as u64 || count.saturating_mul(46) > cd_size {
            return Err(corrupt(format!(
                "central directory ({count} entries, {cd_size} bytes at {cd_off}) does not fit the file"
            )));
        }
        let mut members = Vec::with_capacity(count as usize);
        let mut at = cd_off as usize;
        for _ in 0..count {
            if rd32(bytes, at) != Some(0x0201_4b50) {
                return Err(corrupt(format!("bad central directory entry at byte {at}")));
            }
            let flags = rd16(bytes, at + 8).ok_or_else(trunc)?;
            let method = rd16(bytes, at + 10).ok_or_else(trunc)?;
            let crc = rd32(bytes, at + 16).ok_or_else(trunc)?;
            let mut compressed = rd32(bytes, at + 20).ok_or_else(trunc)? as u64;
            let mut size = rd32(bytes, at + 24).ok_or_else(trunc)? as u64;
            let name_len = rd16(bytes, at + 28).ok_or_else(trunc)? as usize;
            let extra_len = rd16(bytes, at + 30).ok_or_else(trunc)? as usize;
            let comment_len = rd16(bytes, at + 32).ok_or_else(trunc)? as usize;
            let mut local = rd32(bytes, at + 42).ok_or_else(trunc)? as u64;
            let name_b = bytes.get(at + 46..at + 46 + name_len).ok_or_else(trunc)?;
            let name = std::str::from_utf8(name_b)
                .map_err(|_| corrupt(format!("entry name at byte {at} is not UTF-8")))?
                .to_string();
            let extra = bytes
                .get(at + 46 + name_len..at + 46 + name_len + extra_len)
                .ok_or_else(trunc)?;
            // zip64 extended information: the fields that were 0xffffffff, in order.
            let mut e = 0usize;
            while e + 4 <= extra.len() {
                let id = rd16(extra, e).ok_or_else(trunc)?;
                let len = rd16(extra, e + 2).ok_or_else(trunc)? as usize;
                if id == 1 {
                    let mut f = e + 4;
                    for field in [&mut size, &mut compressed, &mut local] {
                        if *field == 0xffff_ffff {
                            *field = rd64(extra, f).ok_or_else(trunc)?;
                            f += 8;
                        }
                    }
                }
                e += 4 + len;
            }
            if flags & 1 != 0 {
                return Err(FormatError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("zip entry '{name}' is encrypted"),
                });
            }
            if !safe_name(&name) {
                return Err(FormatError::UnsafeEntryName {
                    path: path.to_path_buf(),
                    entry: name,
                });
            }
            let method = match method {
                0 => Method::Stored,
                8 => Method::Deflated,
                m => {
                    return Err(FormatError::Unsupported {
                        path: path.to_path_buf(),
                        reason: format!("zip entry '{name}' uses compression method {m}"),
                    })
                }
            };
            if method == Method::Stored && compressed != size {
                return Err(corrupt(format!("stored entry '{name}' has two different sizes")));
            }
            // Local header: 30 bytes + its own name and extra lengths.
            let lh = usize::try_from(local).map_err(|_| trunc())?;
            if rd32(bytes, lh) != Some(0x0403_4b50) {
                return Err(corrupt(format!("entry '{name}': no local header at byte {lh}")));
            }
            let ln = rd16(bytes, lh + 26).ok_or_else(trunc)? as u64;
            let le = rd16(bytes, lh + 28).ok_or_else(trunc)? as u64;
            let data_start = local + 30 + ln + le;
            let data_end = data_start
                .checked_add(compressed)
                .ok_or_else(|| corrupt(format!("entry '{name}': size overflows")))?;
            if data_end > bytes.len() as u64 {
                return Err(corrupt(format!(
                    "entry '{name}' ends at byte {data_end} past the end of the file ({} bytes): truncated",
                    bytes.len()
                )));
            }
            members.push(Member {
                name,
                method,
                crc,
                compressed,
                size,
                data_start,
                local_start: local,
            });
            at = at + 46 + name_len + extra_len + comment_len;
        }
        // One name, one member: a second entry of the same name would make what is read
        // depend on which one a reader picks.
        let mut index = HashMap::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if index.insert(m.name.clone(), i).is_some() {
                return Err(FormatError::corrupt(path, m.name.clone(), "listed twice in the central directory"));
            }
        }
        // Members may not share bytes: from its local header to the end of its data, each
        // member owns its range (many entries over one deflate stream is a zip-bomb shape).
        let mut spans: Vec<(u64, u64, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.local_start, m.data_start + m.compressed, i))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, end_a, a), (start_b, _, b)) = (w[0], w[1]);
            if start_b < end_a {
                return Err(FormatError::OverlappingEntries {
                    path: path.to_path_buf(),
                    entry: members[b].name.clone(),
                    other: members[a].name.clone(),
                });
            }
        }
        Ok(Archive {
            path,
            bytes,
            members,
            index,
            inflate_limit: default_inflate_limit(bytes.len() as u64),
            inflated: Cell::new(0),
        })
    }

    /// Set the budget for inflating deflated members (all together); `None` keeps the
    /// default ([`default_inflate_limit`]).
    pub fn with_inflate_limit(mut self, limit: Option<u64>) -> Self {
        if let Some(l) = limit {
            self.inflate_limit = l;
        }
        self
    }

    /// The member named `name` (O(1)).
    pub fn find(&self, name: &str) -> Option<&Member> {
        self.index.get(name).map(|&i| &self.members[i])
    }

    /// The raw (possibly compressed) bytes of a member, checked against the file.
    pub fn raw(&self, m: &Member) -> &'a [u8] {
        // `data_start + compressed <= bytes.len()` was checked in `parse`.
        &self.bytes[m.data_start as usize..(m.data_start + m.compressed) as usize]
    }

    /// Check a member's CRC-32 over `data` (its whole uncompressed bytes).
    pub fn check_crc(&self, m: &Member, data: &[u8]) -> Result<(), FormatError> {
        self.crc_matches(m, crc32(data, |_, _| {}))
    }

    /// Check a stored member's CRC-32 over its bytes in the archive, [`CRC_CHUNK`] at a time;
    /// `release(start, len)` is called for each stretch of the archive once checked (a mapped
    /// archive drops those pages from the resident set).
    pub fn check_crc_stored(&self, m: &Member, release: impl Fn(usize, usize) + Sync) -> Result<(), FormatError> {
        if m.method != Method::Stored {
            return Err(FormatError::corrupt(self.path, m.name.clone(), "not a stored member"));
        }
        let base = m.data_start as usize;
        self.crc_matches(m, crc32(self.raw(m), |s, n| release(base + s, n)))
    }

    fn crc_matches(&self, m: &Member, got: u32) -> Result<(), FormatError> {
        crc_verdict(self.path, &m.name, m.crc, got)
    }

    /// The member's bytes, CRC-checked: stored members borrowed, deflated ones inflated
    /// (owned) under the archive's inflate budget, the CRC computed while they inflate.
    pub fn read(&self, m: &Member) -> Result<std::borrow::Cow<'a, [u8]>, FormatError> {
        match m.method {
            Method::Stored => {
                let d = self.raw(m);
                self.check_crc(m, d)?;
                Ok(std::borrow::Cow::Borrowed(d))
            }
            Method::Deflated => {
                if m.size > self.inflate_limit {
                    return Err(FormatError::TooLarge {
                        path: self.path.to_path_buf(),
                        entry: m.name.clone(),
                        claimed: m.size,
                        limit: self.inflate_limit,
                    });
                }
                let total = self.inflated.get().saturating_add(m.size);
                if total > self.inflate_limit {
                    return Err(FormatError::OverBudget {
                        path: self.path.to_path_buf(),
                        entry: m.name.clone(),
                        limit: self.inflate_limit,
                        knob: "inflate",
                        env: super::INFLATE_BUDGET_ENV,
                    });
                }
                // Reserve what the (budgeted) header claims; never trust it beyond.
                self.inflated.set(total);
                let mut out = Vec::with_capacity(m.size as usize);
                let mut dec = CrcReader {
                    inner: flate2::read::DeflateDecoder::new(self.raw(m)).take(m.size + 1),
                    crc: crc32fast::Hasher::new(),
                };
                dec.read_to_end(&mut out)
                    .map_err(|e| FormatError::corrupt(self.path, m.name.clone(), format!("deflate: {e}")))?;
                if out.len() as u64 != m.size {
                    return Err(FormatError::corrupt(
                        self.path,
                        m.name.clone(),
                        format!("inflates to {}{} bytes, header says {}", if out.len() as u64 > m.size { "more than " } else { "" }, out.len().min(m.size as usize), m.size),
                    ));
                }
                self.crc_matches(m, dec.crc.finalize())?;
                Ok(std::borrow::Cow::Owned(out))
            }
        }
    }
}

/// A reader that hashes what passes through it.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// `found`, the CRC-32 of member `entry`'s bytes, against the `expected` one the archive
/// stores: a mismatch is [`FormatError::CrcMismatch`].
pub(crate) fn crc_verdict(path: &Path, entry: &str, expected: u32, found: u32) -> Result<(), FormatError> {
    if found != expected {
        return Err(FormatError::CrcMismatch { path: path.to_path_buf(), entry: entry.to_string(), expected, found });
    }
    Ok(())
}

/// CRC-32 of `data`, [`CRC_CHUNK`] at a time, the chunks of a large buffer hashed on all
/// cores and combined in order; `done(start, len)` is called for each chunk once hashed.
pub fn crc32(data: &[u8], done: impl Fn(usize, usize) + Sync) -> u32 {
    use rayon::prelude::*;
    if data.len() <= CRC_CHUNK {
        let c = crc32fast::hash(data);
        done(0, data.len());
        return c;
    }
    let parts: Vec<crc32fast::Hasher> = data
        .par_chunks(CRC_CHUNK)
        .enumerate()
        .map(|(i, c)| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            done(i * CRC_CHUNK, c.len());
            h
        })
        .collect();
    let mut total = crc32fast::Hasher::new();
    for p in &parts {
        total.combine(p);
    }
    total.finalize()
}
