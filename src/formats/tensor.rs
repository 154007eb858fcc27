//! Lazy tensor views over (usually memory-mapped) storage, and their materialisation.
//!
//! Mirrors `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride)`: a view
//! is (dtype, shape, strides in elements, offset in elements) over one storage; several
//! views may share a storage. Materialising honours strides, so a tensor saved as a
//! transposed (non-contiguous) view reads with the right values.

use super::{DType, FormatError, MappedFile};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A view may address at most this many times its storage's bytes (plus 1 MiB) when
/// materialised: stride-0 (broadcast) views are legal, unbounded ones are a memory attack.
pub const MAX_VIEW_EXPANSION: usize = 16;

/// Raw bytes of one storage: a slice of a memory-mapped file ([`MappedFile`]), or bytes owned in memory
/// (decompressed zip members, files too small to be worth mapping).
#[derive(Debug)]
pub enum Storage {
    /// `len` bytes of a mapped file from byte `start`.
    Mapped {
        /// The file's map (shared between storages).
        map: Arc<MappedFile>,
        /// First byte.
        start: usize,
        /// Length in bytes.
        len: usize,
        /// The zip member's CRC-32 when it is checked on first use rather than when the
        /// archive is read ([`ReadLimits::defer_crc`](super::ReadLimits::defer_crc)).
        crc: Option<Box<DeferredCrc>>,
    },
    /// Bytes held in memory.
    Owned(Vec<u8>),
}

impl Storage {
    /// The storage's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            // `start..start+len` was checked against the map when the storage was made.
            Storage::Mapped { map, start, len, .. } => &map[*start..*start + *len],
            Storage::Owned(v) => v,
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Storage::Mapped { len, .. } => *len,
            Storage::Owned(v) => v.len(),
        }
    }
    /// Whether the storage holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drop this process's page-table entries for bytes `start..start+len` of a mapped
    /// storage, so what was read once stops counting in the resident set; the bytes stay in
    /// the page cache and re-read unchanged on the next access. A no-op for owned bytes.
    pub fn release(&self, start: usize, len: usize) {
        if let Storage::Mapped { map, start: base, len: total, .. } = self {
            if start >= *total {
                return;
            }
            map.release_range(base + start, len.min(*total - start));
        }
    }
    /// A mapped storage over `map[start..start+len]`, checked.
    pub fn mapped(
        path: &Path,
        map: Arc<MappedFile>,
        start: usize,
        len: usize,
    ) -> Result<Storage, FormatError> {
        let end = start
            .checked_add(len)
            .ok_or_else(|| FormatError::corrupt(path, "storage", "offset overflows"))?;
        if end > map.len() {
            return Err(FormatError::corrupt(
                path,
                "storage",
                format!("bytes {start}..{end} lie past the end of the file ({} bytes)", map.len()),
            ));
        }
        Ok(Storage::Mapped { map, start, len, crc: None })
    }

    /// A mapped stored zip member whose CRC-32 (`expected`) is checked when it is first
    /// used ([`Storage::check`], [`Storage::accept_crc`]) instead of now: the import hashes
    /// the bytes while it writes them, so they are read once.
    pub fn mapped_deferred(
        path: &Path,
        map: Arc<MappedFile>,
        start: usize,
        len: usize,
        entry: &str,
        expected: u32,
    ) -> Result<Storage, FormatError> {
        let mut s = Storage::mapped(path, map, start, len)?;
        if let Storage::Mapped { crc, .. } = &mut s {
            *crc = Some(Box::new(DeferredCrc {
                path: path.to_path_buf(),
                entry: entry.to_string(),
                expected,
                found: OnceLock::new(),
            }));
        }
        Ok(s)
    }

    /// Whether a deferred CRC-32 has yet to be computed.
    pub fn crc_pending(&self) -> bool {
        matches!(self, Storage::Mapped { crc: Some(c), .. } if c.found.get().is_none())
    }

    /// Check a deferred CRC-32 (computing it the first time, on all cores; with `release`,
    /// the pages read for it are dropped from the resident set again). A no-op for storages
    /// checked when read, or owned.
    pub fn check(&self, release: bool) -> Result<(), FormatError> {
        let Storage::Mapped { crc: Some(c), .. } = self else { return Ok(()) };
        let found = *c.found.get_or_init(|| {
            super::zip::crc32(self.bytes(), |s, n| {
                if release {
                    self.release(s, n)
                }
            })
        });
        c.verdict(found)
    }

    /// Record the deferred CRC-32 `found` over all of [`Storage::bytes`] (hashed by the
    /// caller while it read them) and check it.
    pub fn accept_crc(&self, found: u32) -> Result<(), FormatError> {
        let Storage::Mapped { crc: Some(c), .. } = self else { return Ok(()) };
        c.verdict(*c.found.get_or_init(|| found))
    }
}

/// A stored zip member's CRC-32, checked on first use (see [`Storage::mapped_deferred`]).
#[derive(Debug)]
pub struct DeferredCrc {
    path: PathBuf,
    entry: String,
    expected: u32,
    /// The CRC-32 of the bytes, once computed.
    found: OnceLock<u32>,
}

impl DeferredCrc {
    fn verdict(&self, found: u32) -> Result<(), FormatError> {
        super::zip::crc_verdict(&self.path, &self.entry, self.expected, found)
    }
}

/// One tensor: a strided view into a storage.
#[derive(Debug, Clone)]
pub struct TensorView {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Strides in elements (not bytes), one per dimension.
    pub(crate) strides: Vec<usize>,
    /// Offset of element 0 into the storage, in elements.
    pub(crate) offset: usize,
    /// True when the storage bytes are big-endian (zip `byteorder` = big, `.npy` `>f4`).
    pub(crate) big_endian: bool,
    /// The storage the view reads (shared between views).
    pub(crate) storage: Arc<Storage>,
}

impl TensorView {
    /// Strides in elements (not bytes), one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// True when the storage bytes are big-endian (zip `byteorder` = big, `.npy` `>f4`).
    pub fn big_endian(&self) -> bool {
        self.big_endian
    }

    /// The storage the view reads (shared between views).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }
}

impl TensorView {
    /// A contiguous view over a whole storage, validated.
    pub fn contiguous(
        path: &Path,
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
    ) -> Result<TensorView, FormatError> {
        let strides = contiguous_strides(&shape);
        TensorView::new(path, name, dtype, shape, strides, 0, false, storage)
    }

    /// A strided view, validated: rank of shape = rank of strides, no overflow, and the
    /// last addressed element lies inside the storage.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &Path,
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        big_endian: bool,
        storage: Arc<Storage>,
    ) -> Result<TensorView, FormatError> {
        if shape.len() != strides.len() {
            return Err(FormatError::bad_tensor(
                path,
                name,
                format!("shape has {} dims but stride has {}", shape.len(), strides.len()),
            ));
        }
        let numel = checked_numel(&shape).ok_or_else(|| {
            FormatError::bad_tensor(path, name, format!("shape {shape:?} overflows"))
        })?;
        if numel > 0 {
            // Highest element index addressed: offset + Σ (size − 1)·stride.
            let mut last = offset;
            for (&s, &st) in shape.iter().zip(&strides) {
                last = (s - 1)
                    .checked_mul(st)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| {
                        FormatError::bad_tensor(path, name, "offset + strides overflow")
                    })?;
            }
            let end_bytes = last
                .checked_add(1)
                .and_then(|n| n.checked_mul(dtype.size()))
                .ok_or_else(|| FormatError::bad_tensor(path, name, "byte extent overflows"))?;
            // A view may repeat elements (stride 0), but materialising it must stay within a
            // small multiple of its storage: a broadcast "lie" cannot claim terabytes.
            let nbytes = numel
                .checked_mul(dtype.size())
                .ok_or_else(|| FormatError::bad_tensor(path, name, "byte size overflows"))?;
            let cap = storage.len().saturating_mul(MAX_VIEW_EXPANSION).saturating_add(1 << 20);
            if nbytes > cap {
                return Err(FormatError::bad_tensor(
                    path,
                    name,
                    format!("view of {nbytes} bytes over a storage of {} bytes (repeats elements more than {MAX_VIEW_EXPANSION}x)", storage.len()),
                ));
            }
            if end_bytes > storage.len() {
                return Err(FormatError::bad_tensor(
                    path,
                    name,
                    format!(
                        "view (offset {offset}, shape {shape:?}, stride {strides:?}) reaches byte {end_bytes} but its storage has {} bytes",
                        storage.len()
                    ),
                ));
            }
        }
        Ok(TensorView {
            dtype,
            shape,
            strides,
            offset,
            big_endian,
            storage,
        })
    }

    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        // Checked at construction.
        self.shape.iter().product()
    }

    /// Bytes the tensor's elements take (numel × element size).
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// Whether the view reads its elements in row-major order with no gaps.
    pub fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(&self.shape) || self.numel() <= 1
    }

    /// Element indices into the storage, in row-major order of the view.
    fn for_each_index(&self, mut f: impl FnMut(usize)) {
        let n = self.numel();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            for i in 0..n {
                f(self.offset + i);
            }
            return;
        }
        let rank = self.shape.len();
        let mut idx = vec![0usize; rank];
        let mut pos = self.offset;
        for _ in 0..n {
            f(pos);
            // Odometer increment, last dimension fastest.
            for d in (0..rank).rev() {
                // Wrapping: a size-1 dimension may carry any stride; the final positions were
                // validated against the storage when the view was made.
                idx[d] += 1;
                pos = pos.wrapping_add(self.strides[d]);
                if idx[d] < self.shape[d] {
                    break;
                }
                pos = pos.wrapping_sub(self.strides[d].wrapping_mul(self.shape[d]));
                idx[d] = 0;
            }
        }
    }

    /// The tensor's bytes borrowed straight from its storage, when they already are the
    /// row-major little-endian bytes (contiguous, little-endian): no copy.
    pub fn le_bytes_borrowed(&self) -> Option<&[u8]> {
        if !self.is_contiguous() || self.big_endian {
            return None;
        }
        let start = self.offset * self.dtype.size();
        self.storage.bytes().get(start..start + self.nbytes())
    }

    /// Whether the view reads exactly its storage's bytes as they lie (offset 0, contiguous,
    /// little-endian, every byte): hashing [`Self::le_bytes_borrowed`] hashes the storage.
    pub fn is_whole_storage(&self) -> bool {
        self.offset == 0 && self.is_contiguous() && !self.big_endian && self.nbytes() == self.storage.len()
    }

    /// Check the storage's deferred CRC-32, if any (see [`Storage::check`]).
    pub fn check_storage(&self, release: bool) -> Result<(), FormatError> {
        self.storage.check(release)
    }

    /// Stop counting this tensor's mapped bytes in the resident set (see [`Storage::release`]).
    pub fn release(&self) {
        self.storage.release(self.offset * self.dtype.size(), self.nbytes());
    }

    /// The elements in row-major order, in the tensor's own dtype, as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let es = self.dtype.size();
        let src = self.storage.bytes();
        if self.is_contiguous() && !self.big_endian {
            let start = self.offset * es;
            return src[start..start + self.nbytes()].to_vec();
        }
        let mut out = Vec::with_capacity(self.nbytes());
        self.for_each_index(|i| {
            let b = &src[i * es..(i + 1) * es];
            if self.big_endian {
                out.extend(b.iter().rev());
            } else {
                out.extend_from_slice(b);
            }
        });
        out
    }

    /// The elements converted to f32 (integers and bool cast like `tensor.float()`).
    pub fn to_f32(&self) -> Vec<f32> {
        if self.is_contiguous() && !self.big_endian {
            // Fast path: decode straight from the (mapped) storage, no intermediate copy.
            let es = self.dtype.size();
            let start = self.offset * es;
            return decode_le_f32(self.dtype, &self.storage.bytes()[start..start + self.nbytes()]);
        }
        let bytes = self.to_le_bytes();
        decode_le_f32(self.dtype, &bytes)
    }

    /// The elements converted to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        let bytes = self.to_le_bytes();
        match self.dtype {
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            DType::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
                .collect(),
            _ => decode_le_f32(self.dtype, &bytes).into_iter().map(f64::from).collect(),
        }
    }
}

/// Row-major strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1].saturating_mul(shape[d + 1]);
    }
    strides
}

/// Product of dims, or None on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// Little-endian element bytes of `dtype` → f32.
pub fn decode_le_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        DType::I16 => bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        DType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
        DType::U8 => bytes.iter().map(|&b| b as f32).collect(),
        DType::Bool => bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
    }
}
