//! Minimal writers for building checkpoints in tests, fuzz seeds and the synthetic
//! benchmark input: a pickle byte builder and a stored-only zip writer in the layout
//! `torch.save` produces.
//!
//! Mirrors the byte layouts of `torch/serialization.py` `_save` (records `<root>/data.pkl`,
//! `<root>/byteorder`, `<root>/data/<key>`, 64-byte aligned, stored) and Python's `pickle`
//! protocol 2 opcodes. It is not the project's exporter (that lives in `export/pth.rs`): it
//! writes exactly the bytes a test asks for, hostile ones included.

use std::io::{Seek, SeekFrom, Write};

/// A pickle under construction; every method appends opcodes.
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    /// `PROTO 2`.
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    /// Append bytes as they are.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Append one opcode byte.
    pub fn op(self, op: u8) -> Self {
        self.raw(&[op])
    }
    /// `MARK`.
    pub fn mark(self) -> Self {
        self.op(b'(')
    }
    /// `STOP`.
    pub fn stop(self) -> Self {
        self.op(b'.')
    }
    /// `TUPLE` (from the last mark).
    pub fn tuple(self) -> Self {
        self.op(b't')
    }
    /// `REDUCE`.
    pub fn reduce(self) -> Self {
        self.op(b'R')
    }
    /// `EMPTY_DICT`.
    pub fn empty_dict(self) -> Self {
        self.op(b'}')
    }
    /// `EMPTY_TUPLE`.
    pub fn empty_tuple(self) -> Self {
        self.op(b')')
    }
    /// `SETITEM`.
    pub fn setitem(self) -> Self {
        self.op(b's')
    }
    /// `SETITEMS` (from the last mark).
    pub fn setitems(self) -> Self {
        self.op(b'u')
    }
    /// `BINPERSID`.
    pub fn binpersid(self) -> Self {
        self.op(b'Q')
    }
    /// `NONE`.
    pub fn none(self) -> Self {
        self.op(b'N')
    }
    /// `NEWFALSE`.
    pub fn newfalse(self) -> Self {
        self.op(0x89)
    }
    /// `GLOBAL module\nname\n`.
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
    }
    /// `BINUNICODE`.
    pub fn str(self, s: &str) -> Self {
        let n = (s.len() as u32).to_le_bytes();
        self.op(b'X').raw(&n).raw(s.as_bytes())
    }
    /// `BININT` (or LONG1 for values outside i32).
    pub fn int(self, i: i64) -> Self {
        if let Ok(v) = i32::try_from(i) {
            self.op(b'J').raw(&v.to_le_bytes())
        } else {
            self.op(0x8a).raw(&[8]).raw(&i.to_le_bytes())
        }
    }
    /// `BINPUT k` (memoize the top of the stack).
    pub fn binput(self, k: u8) -> Self {
        self.op(b'q').raw(&[k])
    }
    /// `BINGET k` (push memo entry `k`).
    pub fn binget(self, k: u8) -> Self {
        self.op(b'h').raw(&[k])
    }
    /// A tuple of ints (`MARK ints… TUPLE`).
    pub fn ints(self, v: &[i64]) -> Self {
        let mut p = self.mark();
        for &i in v {
            p = p.int(i);
        }
        p.tuple()
    }
    /// `('storage', torch.<class>, key, 'cpu', numel)` BINPERSID.
    pub fn storage(self, class: &str, key: &str, numel: i64) -> Self {
        self.mark()
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .tuple()
            .binpersid()
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(self, class: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .storage(class, key, numel)
            .int(offset)
            .ints(size)
            .ints(stride)
            .newfalse()
            .global("collections", "OrderedDict")
            .empty_tuple()
            .reduce()
            .tuple()
            .reduce()
    }
}

/// Row-major strides of `size`.
pub fn strides(size: &[i64]) -> Vec<i64> {
    let mut st = vec![1i64; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * size[d + 1];
    }
    st
}

struct Entry {
    name: String,
    crc: u32,
    size: u64,
    /// Bytes stored (the deflate stream's length for a deflated member).
    compressed: u64,
    /// 0 stored, 8 deflated.
    method: u16,
    offset: u64,
}

/// A stored-only zip writer (zip64 not written: archives must stay under 4 GiB).
pub struct ZipWriter<W: Write + Seek> {
    w: W,
    entries: Vec<Entry>,
    /// Align each record's data to this many bytes (torch uses 64).
    pub align: u64,
}

impl<W: Write + Seek> ZipWriter<W> {
    /// A writer into `w`, records aligned to 64 bytes.
    pub fn new(w: W) -> Self {
        ZipWriter {
            w,
            entries: Vec::new(),
            align: 64,
        }
    }

    /// Add a stored member, producing its bytes in chunks through `fill` (CRC patched after).
    pub fn add_with(
        &mut self,
        name: &str,
        size: u64,
        mut fill: impl FnMut(&mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let offset = self.w.stream_position()?;
        // Padding in the extra field so the data starts aligned.
        let base = offset + 30 + name.len() as u64 + 4;
        let pad = (self.align - base % self.align) % self.align;
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes()); // version
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&0u16.to_le_bytes()); // stored
        h.extend_from_slice(&[0, 0, 0, 0]); // time, date
        h.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        h.extend_from_slice(&(size as u32).to_le_bytes());
        h.extend_from_slice(&(size as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&((4 + pad) as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&0xcafeu16.to_le_bytes());
        h.extend_from_slice(&(pad as u16).to_le_bytes());
        h.extend(std::iter::repeat_n(0u8, pad as usize));
        self.w.write_all(&h)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut written = 0u64;
        {
            let w = &mut self.w;
            let mut sink = |b: &[u8]| -> std::io::Result<()> {
                hasher.update(b);
                written += b.len() as u64;
                w.write_all(b)
            };
            fill(&mut sink)?;
        }
        if written != size {
            return Err(std::io::Error::other(format!("{name}: wrote {written} of {size} bytes")));
        }
        let crc = hasher.finalize();
        let end = self.w.stream_position()?;
        self.w.seek(SeekFrom::Start(offset + 14))?;
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.seek(SeekFrom::Start(end))?;
        self.entries.push(Entry {
            name: name.to_string(),
            crc,
            size,
            compressed: size,
            method: 0,
            offset,
        });
        Ok(())
    }

    /// Add a deflated member (`.npz` writers compress; `torch.save` never does).
    pub fn add_deflated(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data)?;
        let comp = enc.finish()?;
        let offset = self.w.stream_position()?;
        let crc = crc32fast::hash(data);
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&8u16.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(&comp)?;
        self.entries.push(Entry {
            name: name.to_string(),
            crc,
            size: data.len() as u64,
            compressed: comp.len() as u64,
            method: 8,
            offset,
        });
        Ok(())
    }

    /// Add a central-directory entry named `name` that points at the bytes of the member
    /// added as number `of` (hostile: many names over one deflate stream is a zip bomb).
    pub fn alias(&mut self, name: &str, of: usize) {
        if let Some(e) = self.entries.get(of) {
            let e = Entry {
                name: name.to_string(),
                crc: e.crc,
                size: e.size,
                compressed: e.compressed,
                method: e.method,
                offset: e.offset,
            };
            self.entries.push(e);
        }
    }

    /// Mutable access to the bytes written so far (to flip bits in tests).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Add a stored member holding `data`.
    pub fn add(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.add_with(name, data.len() as u64, |sink| sink(data))
    }

    /// Write the central directory and end record; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let cd_start = self.w.stream_position()?;
        for e in &self.entries {
            let mut h = Vec::new();
            h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&e.method.to_le_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&(e.compressed as u32).to_le_bytes());
            h.extend_from_slice(&(e.size as u32).to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            h.extend_from_slice(&0u16.to_le_bytes()); // comment
            h.extend_from_slice(&0u16.to_le_bytes()); // disk
            h.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
            h.extend_from_slice(&0u32.to_le_bytes()); // external attrs
            h.extend_from_slice(&(e.offset as u32).to_le_bytes());
            h.extend_from_slice(e.name.as_bytes());
            self.w.write_all(&h)?;
        }
        let cd_end = self.w.stream_position()?;
        let n = self.entries.len() as u16;
        let mut h = Vec::new();
        h.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h.extend_from_slice(&n.to_le_bytes());
        h.extend_from_slice(&n.to_le_bytes());
        h.extend_from_slice(&((cd_end - cd_start) as u32).to_le_bytes());
        h.extend_from_slice(&(cd_start as u32).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        self.w.write_all(&h)?;
        Ok(self.w)
    }
}

/// A whole torch zip archive in memory: `root/data.pkl`, `root/byteorder`, `root/data/<k>`.
pub fn torch_zip(root: &str, pkl: &[u8], byteorder: &str, records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // Writing to a Vec cannot fail.
    let mut go = || -> std::io::Result<Vec<u8>> {
        z.add(&format!("{root}/data.pkl"), pkl)?;
        z.add(&format!("{root}/byteorder"), byteorder.as_bytes())?;
        for (k, b) in records {
            z.add(&format!("{root}/data/{k}"), b)?;
        }
        Ok(Vec::new())
    };
    let _ = go();
    z.finish().map(|c| c.into_inner()).unwrap_or_default()
}

/// timm block `i`'s norm and attention tensors at embed `d`, with their shapes, in the order
/// timm's `state_dict()` lists them (the MLP is the caller's, or [`timm_block`]'s).
pub fn timm_block_attn(i: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    [
        ("norm1.weight", vec![d]),
        ("norm1.bias", vec![d]),
        ("attn.qkv.weight", vec![3 * d, d]),
        ("attn.qkv.bias", vec![3 * d]),
        ("attn.proj.weight", vec![d, d]),
        ("attn.proj.bias", vec![d]),
        ("norm2.weight", vec![d]),
        ("norm2.bias", vec![d]),
    ]
    .into_iter()
    .map(|(n, s)| (format!("blocks.{i}.{n}"), s))
    .collect()
}

/// A whole timm block `i` at embed `d`: [`timm_block_attn`] and the `4d` GELU MLP.
pub fn timm_block(i: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = timm_block_attn(i, d);
    for (n, s) in [
        ("mlp.fc1.weight", vec![4 * d, d]),
        ("mlp.fc1.bias", vec![4 * d]),
        ("mlp.fc2.weight", vec![d, 4 * d]),
        ("mlp.fc2.bias", vec![d]),
    ] {
        v.push((format!("blocks.{i}.{n}"), s));
    }
    v
}
