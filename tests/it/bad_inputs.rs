//! Hostile and broken inputs (BAD_INPUTS.md): each is refused with its typed error variant
//! (matched on the variant, never the message), nothing panics, nothing is written beside
//! the input, and length lies are refused without allocating what they claim.

use crate::util::{siblings, temp_file, tmpdir};
use comer_port::formats::testkit::{strides, torch_zip, Pickle, ZipWriter};
use comer_port::formats::{self, FormatError};
use std::time::Instant;

/// Write `bytes` as `name` in a fresh folder, open it, and return the error; asserts that
/// nothing else appeared in the folder and that refusing took well under a second.
fn refuse(name: &str, bytes: &[u8]) -> FormatError {
    let p = temp_file(name, bytes);
    let t = Instant::now();
    let r = formats::open(&p);
    assert!(t.elapsed().as_secs_f64() < 2.0, "{name}: refusing took {:?}", t.elapsed());
    assert_eq!(siblings(&p), 1, "{name}: something was written beside the input");
    match r {
        Ok(ck) => panic!("{name}: accepted ({} tensors)", ck.tensors().len()),
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "one-line message: {e}");
            e
        }
    }
}

/// A torch zip whose data.pkl is `pkl` and whose records are `recs`.
fn zip_with(pkl: &Pickle, recs: &[(&str, &[u8])]) -> Vec<u8> {
    torch_zip("archive", &pkl.0, "little", recs)
}

/// `{"w": tensor}` over FloatStorage "0" of `numel` elements.
fn one_tensor(numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Pickle {
    Pickle::new()
        .empty_dict()
        .str("w")
        .tensor("FloatStorage", "0", numel, offset, size, stride)
        .setitem()
        .stop()
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// A pickle that calls `module.name("x")` via REDUCE.
fn call(module: &str, name: &str) -> Pickle {
    Pickle::new().global(module, name).mark().str("echo pwned").tuple().reduce().stop()
}

fn assert_forbidden(e: FormatError, m: &str, n: &str) {
    match e {
        FormatError::ForbiddenGlobal { module, name, .. } => assert_eq!((module.as_str(), name.as_str()), (m, n)),
        other => panic!("expected ForbiddenGlobal({m}.{n}), got {other:?}"),
    }
}

macro_rules! variant {
    ($e:expr, $p:pat) => {{
        let e = $e;
        assert!(matches!(e, $p), "wrong variant: {e:?}");
    }};
}

// ---- code execution: every unknown GLOBAL refused before any call ----

#[test]
fn os_system_in_a_zip() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("os", "system"), &[])), "os", "system");
}
#[test]
fn posix_system_in_a_raw_pickle_named_bin() {
    assert_forbidden(refuse("pytorch_model.bin", &call("posix", "system").0), "posix", "system");
}
#[test]
fn builtins_eval() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("builtins", "eval"), &[])), "builtins", "eval");
}
#[test]
fn builtins_exec() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("builtins", "exec"), &[])), "builtins", "exec");
}
#[test]
fn builtins_getattr() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("builtins", "getattr"), &[])), "builtins", "getattr");
}
#[test]
fn builtins_import() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("builtins", "__import__"), &[])), "builtins", "__import__");
}
#[test]
fn subprocess_popen_via_reduce() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("subprocess", "Popen"), &[])), "subprocess", "Popen");
}

fn legacy_prefix() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(Pickle::new().op(0x8a).raw(&[10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]).stop().0);
    b.extend(Pickle::new().op(b'M').raw(&1001u16.to_le_bytes()).stop().0);
    b.extend(Pickle::new().empty_dict().str("little_endian").op(0x88).setitem().stop().0);
    b
}

/// A legacy file: prefix, object pickle, key list, then (u64 count, bytes) per key.
fn legacy(obj: &Pickle, keys: &[&str], records: &[(u64, &[u8])]) -> Vec<u8> {
    let mut b = legacy_prefix();
    b.extend(&obj.0);
    let mut kl = Pickle::new().mark();
    for k in keys {
        kl = kl.str(k);
    }
    b.extend(kl.op(b'l').stop().0);
    for (n, data) in records {
        b.extend(n.to_le_bytes());
        b.extend(*data);
    }
    b
}

#[test]
fn os_system_in_a_legacy_object_pickle() {
    assert_forbidden(refuse("old.pth", &legacy(&call("os", "system"), &[], &[])), "os", "system");
}
#[test]
fn os_system_in_a_torchscript_archive() {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("m/data.pkl", &call("os", "system").0).expect("add");
    z.add("m/constants.pkl", &Pickle::new().empty_tuple().stop().0).expect("add");
    z.add("m/code/__torch__.py", b"def forward(self): ...").expect("add");
    let bytes = z.finish().expect("finish").into_inner();
    assert_forbidden(refuse("ts.pt", &bytes), "os", "system");
}
#[test]
fn torch_module_objects_are_refused_outside_torchscript() {
    let p = Pickle::new().global("__torch__.evil", "Module").empty_tuple().op(0x81).stop();
    assert_forbidden(refuse("m.pth", &zip_with(&p, &[])), "__torch__.evil", "Module");
}
#[test]
fn stack_global_from_memoised_strings() {
    let p = Pickle::new().str("os").binput(0).str("system").binput(1).op(b'0').op(b'0').binget(0).binget(1).op(0x93).stop();
    assert_forbidden(refuse("m.pth", &zip_with(&p, &[])), "os", "system");
}
#[test]
fn inst_opcode() {
    let p = Pickle::new().mark().str("x").raw(b"ios\nsystem\n").stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn obj_opcode() {
    let p = Pickle::new().mark().global("collections", "OrderedDict").op(b'o').stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn operator_attrgetter() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("operator", "attrgetter"), &[])), "operator", "attrgetter");
}
#[test]
fn functools_partial() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("functools", "partial"), &[])), "functools", "partial");
}
#[test]
fn pkgutil_resolve_name() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("pkgutil", "resolve_name"), &[])), "pkgutil", "resolve_name");
}
#[test]
fn nested_pickle_loads() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("pickle", "loads"), &[])), "pickle", "loads");
}
#[test]
fn rebuild_from_type_v2() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("torch._tensor", "_rebuild_from_type_v2"), &[])), "torch._tensor", "_rebuild_from_type_v2");
}
#[test]
fn quantized_tensor_rebuild() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("torch._utils", "_rebuild_qtensor"), &[])), "torch._utils", "_rebuild_qtensor");
}
#[test]
fn sparse_tensor_rebuild() {
    assert_forbidden(refuse("m.pth", &zip_with(&call("torch._utils", "_rebuild_sparse_tensor"), &[])), "torch._utils", "_rebuild_sparse_tensor");
}
#[test]
fn quantized_storage_type() {
    let p = Pickle::new().empty_dict().str("w").tensor("QUInt8Storage", "0", 4, 0, &[4], &[1]).setitem().stop();
    assert_forbidden(refuse("m.pth", &zip_with(&p, &[("0", &[0u8; 4])])), "torch", "QUInt8Storage");
}
#[test]
fn second_pickle_after_stop_in_data_pkl() {
    let mut p = one_tensor(4, 0, &[4], &[1]);
    p = p.raw(&call("os", "system").0);
    variant!(refuse("m.pth", &zip_with(&p, &[("0", &f32_bytes(4))])), FormatError::Pickle { .. });
}
#[test]
fn legacy_magic_that_is_not_the_literal_number() {
    let mut b = Pickle::new().op(0x8a).raw(&[10, 0x6d, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]).stop().0;
    b.extend(&legacy_prefix()[15..]);
    variant!(refuse("old.pth", &b), FormatError::Corrupt { .. });
}

// ---- pickle VM abuse ----

#[test]
fn long_binput_at_u32_max_on_an_empty_stack() {
    let p = Pickle::new().op(b'r').raw(&u32::MAX.to_le_bytes()).none().stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn long_binput_at_u32_max_is_bounded() {
    // A sparse huge memo index allocates nothing: it reads, then a get of another slot fails.
    let p = Pickle::new().none().op(b'r').raw(&u32::MAX.to_le_bytes()).op(b'j').raw(&(u32::MAX - 1).to_le_bytes()).stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn binget_of_an_unset_slot() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().binget(7).stop(), &[])), FormatError::Pickle { .. });
}
#[test]
fn tuple3_underflow() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().none().op(0x87).stop(), &[])), FormatError::Pickle { .. });
}
#[test]
fn reduce_underflow() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().empty_tuple().reduce().stop(), &[])), FormatError::Pickle { .. });
}
#[test]
fn setitem_underflow() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().empty_dict().none().setitem().stop(), &[])), FormatError::Pickle { .. });
}
#[test]
fn millions_of_nested_marks() {
    let p = Pickle::new().raw(&vec![b'('; 2_000_000]).stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn length_prefix_of_a_terabyte() {
    // BINBYTES8 claiming 1 TB: refused as a length lie, nothing of that size allocated.
    let p = Pickle::new().op(0x8e).raw(&(1u64 << 40).to_le_bytes()).raw(b"abc").stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Truncated { .. });
}
#[test]
fn unicode_length_past_the_end() {
    let p = Pickle::new().op(b'X').raw(&u32::MAX.to_le_bytes()).raw(b"abc");
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Truncated { .. });
}
#[test]
fn invalid_utf8_in_a_global() {
    let p = Pickle::new().raw(b"c\xff\xfe\nsystem\n").stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn unknown_opcode() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().op(0xff).stop(), &[])), FormatError::Pickle { .. });
}
#[test]
fn missing_stop() {
    variant!(refuse("m.pth", &zip_with(&Pickle::new().empty_dict(), &[])), FormatError::Pickle { .. });
}
#[test]
fn binpersid_of_a_non_tuple() {
    let p = Pickle::new().str("storage").binpersid().stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn binpersid_not_storage() {
    let p = Pickle::new().mark().str("module").global("torch", "FloatStorage").str("0").str("cpu").int(1).tuple().binpersid().stop();
    variant!(refuse("m.pth", &zip_with(&p, &[("0", &f32_bytes(1))])), FormatError::Pickle { .. });
}
#[test]
fn setitem_on_a_tensor() {
    let p = Pickle::new().tensor("FloatStorage", "0", 4, 0, &[4], &[1]).str("k").none().setitem().stop();
    variant!(refuse("m.pth", &zip_with(&p, &[("0", &f32_bytes(4))])), FormatError::Pickle { .. });
}
#[test]
fn cyclic_container() {
    let p = Pickle::new().op(b']').binput(0).binget(0).op(b'a').stop();
    variant!(refuse("m.pth", &zip_with(&p, &[])), FormatError::Pickle { .. });
}
#[test]
fn duplicate_keys_naming_two_tensors() {
    let p = Pickle::new()
        .empty_dict()
        .mark()
        .str("w")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .str("w")
        .tensor("FloatStorage", "0", 4, 0, &[2], &[1])
        .setitems()
        .stop();
    variant!(refuse("m.pth", &zip_with(&p, &[("0", &f32_bytes(4))])), FormatError::DuplicateKey { .. });
}
#[test]
fn memo_billion_laughs() {
    // A list of 1000 Nones, then lists of 1000 references to it, nested: refused by the
    // pickle budget (every BINGET is a copy). Each list is popped once memoised, so the gets
    // are not refused as cycles (issue 14: the test used to stop at the cycle check).
    let mut p = Pickle::new().op(b']').mark();
    for _ in 0..1000 {
        p = p.none();
    }
    p = p.op(b'e').binput(0).op(b'0');
    for level in 1..6u8 {
        p = p.op(b']').mark();
        for _ in 0..1000 {
            p = p.binget(level - 1);
        }
        p = p.op(b'e').binput(level).op(b'0');
    }
    variant!(refuse("m.pth", &zip_with(&p.none().stop(), &[])), FormatError::OverBudget { .. });
}
#[test]
fn deeply_nested_lists() {
    let mut p = Pickle::new();
    for _ in 0..100_000 {
        p = p.op(b']');
    }
    for _ in 0..99_999 {
        p = p.op(b'a');
    }
    variant!(refuse("m.pth", &zip_with(&p.stop(), &[])), FormatError::Pickle { .. });
}

// ---- containers ----

fn good_zip() -> Vec<u8> {
    zip_with(&one_tensor(4, 0, &[4], &[1]), &[("0", &f32_bytes(4))])
}

#[test]
fn good_zip_reads() {
    let p = temp_file("ok.pth", &good_zip());
    let ck = formats::open(&p).expect("the baseline archive reads");
    assert_eq!(ck.tensors()[0].1.to_f32(), vec![0.0, 1.0, 2.0, 3.0]);
}
#[test]
fn truncated_zip() {
    let b = std::fs::read(crate::util::fixture("sources/deit/deit_tiny.pth")).expect("fixture");
    let cut = &b[..b.len() / 2];
    variant!(refuse("cut.pth", cut), FormatError::Corrupt { .. });
}
#[test]
fn missing_end_of_central_directory() {
    let mut b = good_zip();
    let n = b.len();
    b[n - 22..n - 18].copy_from_slice(b"XXXX");
    variant!(refuse("m.pth", &b), FormatError::Corrupt { .. });
}
#[test]
fn crc_mismatch() {
    let mut b = good_zip();
    // Flip a byte of the tensor record (the last member's data, just before the central directory).
    let pos = b.windows(16).position(|w| w == &f32_bytes(4)[..]).expect("record bytes");
    b[pos + 5] ^= 0x40;
    variant!(refuse("m.pth", &b), FormatError::CrcMismatch { .. });
}

/// A one-member zip whose member is deflated and declares `size`.
fn deflated_zip(name: &str, payload: &[u8], declared_size: u32) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(payload).expect("deflate");
    let comp = enc.finish().expect("deflate");
    let crc = crc32fast::hash(payload);
    let mut b = Vec::new();
    b.extend(0x0403_4b50u32.to_le_bytes());
    b.extend(20u16.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(8u16.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(crc.to_le_bytes());
    b.extend((comp.len() as u32).to_le_bytes());
    b.extend(declared_size.to_le_bytes());
    b.extend((name.len() as u16).to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(name.as_bytes());
    b.extend(&comp);
    let cd = b.len() as u32;
    b.extend(0x0201_4b50u32.to_le_bytes());
    b.extend(20u16.to_le_bytes());
    b.extend(20u16.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(8u16.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(crc.to_le_bytes());
    b.extend((comp.len() as u32).to_le_bytes());
    b.extend(declared_size.to_le_bytes());
    b.extend((name.len() as u16).to_le_bytes());
    b.extend([0u8; 12]);
    b.extend(0u32.to_le_bytes());
    b.extend(name.as_bytes());
    let cd_len = b.len() as u32 - cd;
    b.extend(0x0605_4b50u32.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(1u16.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(cd_len.to_le_bytes());
    b.extend(cd.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b
}

#[test]
fn deflate_bomb_claiming_4_gb() {
    // 4 GB of declared output from a ~1 kB file: refused before any allocation.
    let b = deflated_zip("bomb.npy", &vec![0u8; 100_000], u32::MAX);
    variant!(refuse("bomb.npz", &b), FormatError::TooLarge { .. });
}
#[test]
fn deflate_bomb_that_lies_small() {
    // Declares 100 bytes but inflates to 50 MB: decompression stops at the declared size.
    let b = deflated_zip("bomb.npy", &vec![0u8; 50_000_000], 100);
    variant!(refuse("bomb.npz", &b), FormatError::Corrupt { .. });
}
#[test]
fn deflate_bomb_in_a_storage_record() {
    let pkl = one_tensor(4, 0, &[4], &[1]);
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("archive/data.pkl", &pkl.0).expect("add");
    let mut b = z.finish().expect("finish").into_inner();
    // Append a second archive's deflated member is complex; instead build the record alone.
    let bomb = deflated_zip("archive/data/0", &vec![0u8; 20_000_000], 20_000_000);
    // Merge: a torch archive whose only storage is the bomb (data.pkl stored beside it).
    b = merge_zips(&b, &bomb);
    variant!(refuse("bomb.pth", &b), FormatError::TooLarge { .. });
}

/// Concatenate the members of two single-archive byte strings into one archive.
fn merge_zips(a: &[u8], b: &[u8]) -> Vec<u8> {
    fn split(z: &[u8]) -> (Vec<u8>, Vec<u8>, u16) {
        let eocd = z.len() - 22;
        let cd_off = u32::from_le_bytes([z[eocd + 16], z[eocd + 17], z[eocd + 18], z[eocd + 19]]) as usize;
        let n = u16::from_le_bytes([z[eocd + 10], z[eocd + 11]]);
        (z[..cd_off].to_vec(), z[cd_off..eocd].to_vec(), n)
    }
    let (la, ca, na) = split(a);
    let (lb, mut cb, nb) = split(b);
    // Shift b's local header offsets by la.len().
    let mut i = 0;
    while i + 46 <= cb.len() {
        let off = u32::from_le_bytes([cb[i + 42], cb[i + 43], cb[i + 44], cb[i + 45]]) + la.len() as u32;
        cb[i + 42..i + 46].copy_from_slice(&off.to_le_bytes());
        let nl = u16::from_le_bytes([cb[i + 28], cb[i + 29]]) as usize;
        let el = u16::from_le_bytes([cb[i + 30], cb[i + 31]]) as usize;
        let cl = u16::from_le_bytes([cb[i + 32], cb[i + 33]]) as usize;
        i += 46 + nl + el + cl;
    }
    let mut out = la.clone();
    out.extend(&lb);
    let cd = out.len() as u32;
    out.extend(&ca);
    out.extend(&cb);
    let cd_len = out.len() as u32 - cd;
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((na + nb).to_le_bytes());
    out.extend((na + nb).to_le_bytes());
    out.extend(cd_len.to_le_bytes());
    out.extend(cd.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[test]
fn dot_dot_entry_name() {
    let b = torch_zip("../../etc", &one_tensor(4, 0, &[4], &[1]).0, "little", &[("0", &f32_bytes(4))]);
    variant!(refuse("m.pth", &b), FormatError::UnsafeEntryName { .. });
}
#[test]
fn absolute_entry_name() {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("/etc/passwd", b"root").expect("add");
    let b = z.finish().expect("finish").into_inner();
    variant!(refuse("m.pth", &b), FormatError::UnsafeEntryName { .. });
}
#[test]
fn missing_data_pkl() {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("archive/data/0", &f32_bytes(4)).expect("add");
    let b = z.finish().expect("finish").into_inner();
    variant!(refuse("m.pth", &b), FormatError::MissingEntry { .. });
}
#[test]
fn missing_storage_record() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &[4], &[1]), &[])), FormatError::MissingEntry { .. });
}
#[test]
fn byteorder_neither_little_nor_big() {
    let b = torch_zip("archive", &one_tensor(4, 0, &[4], &[1]).0, "middle", &[("0", &f32_bytes(4))]);
    variant!(refuse("m.pth", &b), FormatError::Corrupt { .. });
}
#[test]
fn png_named_pth() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
    variant!(refuse("model.pth", png), FormatError::Unsupported { .. });
}
#[test]
fn empty_file() {
    variant!(refuse("model.pth", b""), FormatError::Empty { .. });
}
#[test]
fn nonexistent_file_is_io() {
    let p = tmpdir().join("does-not-exist.pth");
    variant!(formats::open(&p).expect_err("missing file"), FormatError::Io { .. });
}

fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

#[test]
fn safetensors_header_length_past_the_file() {
    let mut b = safetensors_bytes(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]);
    b[..8].copy_from_slice(&50_000_000u64.to_le_bytes());
    variant!(refuse("m.safetensors", &b), FormatError::Truncated { .. });
}
#[test]
fn safetensors_header_over_100_mb() {
    let mut b = safetensors_bytes(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]);
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    variant!(refuse("m.safetensors", &b), FormatError::TooLarge { .. });
}
#[test]
fn safetensors_offsets_past_the_end() {
    let b = safetensors_bytes(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 4]);
    variant!(refuse("m.safetensors", &b), FormatError::Corrupt { .. });
}
#[test]
fn safetensors_overlapping_offsets() {
    let b = safetensors_bytes(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    variant!(refuse("m.safetensors", &b), FormatError::Corrupt { .. });
}
#[test]
fn safetensors_non_contiguous_offsets() {
    let b = safetensors_bytes(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    variant!(refuse("m.safetensors", &b), FormatError::Corrupt { .. });
}

fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

#[test]
fn npy_object_dtype() {
    variant!(refuse("a.npy", &npy_bytes("|O", "(2,)", b"\x80\x02N.")), FormatError::ObjectArray { .. });
}
#[test]
fn npy_short_payload() {
    variant!(refuse("a.npy", &npy_bytes("<f4", "(1000,)", &[0; 16])), FormatError::Truncated { .. });
}
#[test]
fn npy_absurd_header_length() {
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend(u32::MAX.to_le_bytes());
    b.extend(b"{'descr': '<f4'");
    variant!(refuse("a.npy", &b), FormatError::TooLarge { .. });
}
#[test]
fn npy_shape_that_overflows() {
    let b = npy_bytes("<f4", "(4294967296, 4294967296, 4294967296)", &[0; 16]);
    variant!(refuse("a.npy", &b), FormatError::BadTensor { .. });
}

// ---- tensor metadata lies ----

#[test]
fn persistent_id_numel_larger_than_the_record() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(1 << 40, 0, &[4], &[1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn view_past_the_storage() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 2, &[4], &[1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn strided_view_past_the_storage() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &[2, 2], &[3, 1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn negative_size() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &[-4], &[1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn negative_stride() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 3, &[4], &[-1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn negative_offset() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, -1, &[4], &[1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn rank_of_size_differs_from_stride() {
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &[2, 2], &[1]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn shape_product_overflows() {
    let size = [1i64 << 32, 1 << 32, 1 << 32];
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &size, &strides(&size)), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}
#[test]
fn one_storage_read_as_two_dtypes() {
    let p = Pickle::new()
        .empty_dict()
        .mark()
        .str("a")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .str("b")
        .tensor("HalfStorage", "0", 8, 0, &[8], &[1])
        .setitems()
        .stop();
    variant!(refuse("m.pth", &zip_with(&p, &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}

/// Legacy object pickle with one tensor over a view (view key, offset, size) of root "r".
fn legacy_view_pickle(root_numel: i64, view_off: i64, view_size: i64) -> Pickle {
    Pickle::new()
        .empty_dict()
        .str("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("r")
        .str("cpu")
        .int(root_numel)
        .mark()
        .str("v")
        .int(view_off)
        .int(view_size)
        .tuple()
        .tuple()
        .binpersid()
        .int(0)
        .ints(&[view_size])
        .ints(&[1])
        .newfalse()
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce()
        .tuple()
        .reduce()
        .setitem()
        .stop()
}

#[test]
fn legacy_reads_a_view_inside_its_root() {
    let data = f32_bytes(8);
    let p = temp_file("ok.pth", &legacy(&legacy_view_pickle(8, 2, 4), &["r"], &[(8, &data)]));
    let ck = formats::open(&p).expect("valid legacy view");
    assert_eq!(ck.tensors()[0].1.to_f32(), vec![2.0, 3.0, 4.0, 5.0]);
}
#[test]
fn legacy_view_outside_its_root_storage() {
    let data = f32_bytes(8);
    variant!(refuse("old.pth", &legacy(&legacy_view_pickle(8, 6, 4), &["r"], &[(8, &data)])), FormatError::BadTensor { .. });
}
#[test]
fn legacy_record_claiming_a_terabyte() {
    let data = f32_bytes(8);
    variant!(refuse("old.pth", &legacy(&legacy_view_pickle(8, 2, 4), &["r"], &[(1 << 38, &data)])), FormatError::Truncated { .. });
}

#[test]
fn hf_index_naming_a_shard_outside_the_folder() {
    let dir = tmpdir();
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"w": "../../secret.safetensors"}}"#).expect("write");
    variant!(formats::open(&dir).expect_err("refused"), FormatError::UnsafeEntryName { .. });
}

#[test]
fn broadcast_view_claiming_a_terabyte() {
    // Stride 0 repeats one element 2^38 times: a legal-looking view whose materialisation
    // would need 1 TB. Refused by the expansion cap, nothing allocated.
    variant!(refuse("m.pth", &zip_with(&one_tensor(4, 0, &[1 << 38], &[0]), &[("0", &f32_bytes(4))])), FormatError::BadTensor { .. });
}

#[test]
fn small_broadcast_view_reads() {
    let p = temp_file("ok.pth", &zip_with(&one_tensor(4, 1, &[3, 2], &[0, 1]), &[("0", &f32_bytes(4))]));
    let ck = formats::open(&p).expect("stride-0 view within bounds");
    assert_eq!(ck.tensors()[0].1.to_f32(), vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
}
