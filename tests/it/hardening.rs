//! Issue 14 (hardening): each defect class from the second attack pass, fixed as a class and
//! tested here with files crafted in the test — memory amplification in the pickle VM,
//! shared-deflate zip bombs, tens of thousands of storages, CRC on every member read,
//! FIFOs / devices / sockets / escaping symlinks as input, the output writers (temp
//! names, no-replace publish, cleanup), config values out of range in every subcommand and
//! in an artifact's recorded config (5), terminal escapes in key and file names (7), outputs
//! that are one file (10) or an input, `--force` included (12). Where memory matters, the
//! release binary is run on the crafted file and its peak RSS read with `wait4`.
//! docs/guarantees.md states the bounds.

use crate::util::{bin, fixture, siblings, temp_file, tmpdir};
use comer_port::export::atomic::{self, AtomicFile, WriteError};
use comer_port::formats::testkit::{torch_zip, Pickle, ZipWriter};
use comer_port::formats::{self, FormatError, ReadLimits};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

macro_rules! variant {
    ($e:expr, $p:pat) => {{
        let e = $e;
        assert!(matches!(e, $p), "wrong variant: {e:?}");
    }};
}

/// Peak RSS (KiB) a refused crafted file may cost the process: the pickle budget for a
/// ~1 MiB pickle is 64 MiB + 128 × 1 MiB, plus the binary's own ~20 MiB. Before issue 14
/// these files reached 3–4 GB.
const AMPLIFICATION_RSS_KB: u64 = 400 << 10;
/// Peak RSS (KiB) for the refused zip bombs (refused from the central directory alone).
const BOMB_RSS_KB: u64 = 64 << 10;

/// Environment variable that turns [`rss_launcher`] on: the arguments for `comer-port`,
/// separated by U+001F.
const LAUNCH_ENV: &str = "COMER_PORT_IT_RSS_LAUNCH";

/// Run `comer-port ARGS…` (with extra environment), return (exit code, peak RSS in KiB,
/// stderr).
///
/// Peak RSS is `ru_maxrss` from `wait4`, but Linux carries the high-water mark of the
/// memory a process was spawned from across `exec`: a child spawned straight from this
/// (large, multi-threaded) test process would report this process's RSS. So the child is
/// spawned by a small launcher — this test binary re-run as [`rss_launcher`] alone — whose
/// own few MiB are the only inherited part.
fn run_measured(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (i32, u64, String) {
    let joined: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["hardening::rss_launcher", "--exact", "--nocapture", "--test-threads=1"])
        .env(LAUNCH_ENV, joined.join("\u{1f}"))
        .env("COMER_PORT_IT_BIN", env!("CARGO_BIN_EXE_comer-port"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("launcher");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RSS-MEASURE "))
        .unwrap_or_else(|| panic!("launcher printed no measurement:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    let mut it = line.split(' ');
    let code: i32 = it.next().and_then(|c| c.parse().ok()).expect("code");
    let rss: u64 = it.next().and_then(|c| c.parse().ok()).expect("rss");
    let stderr = text
        .split_once("RSS-STDERR\n")
        .and_then(|(_, e)| e.split_once("RSS-END\n"))
        .map(|(e, _)| e.to_string())
        .unwrap_or_default();
    (code, rss, stderr)
}

/// Not a test on its own: with [`LAUNCH_ENV`] set (by [`run_measured`]) it runs comer-port
/// with those arguments, reaps it with `wait4` and prints its exit code, peak RSS and stderr.
#[test]
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn rss_launcher() {
    let Ok(args) = std::env::var(LAUNCH_ENV) else {
        return;
    };
    let exe = std::env::var("COMER_PORT_IT_BIN").expect("binary");
    let mut child = std::process::Command::new(exe)
        .args(args.split('\u{1f}'))
        .env_remove(LAUNCH_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn comer-port");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read stderr on a thread so a chatty child can never block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it and the status for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for (and reaps) exactly the child spawned above.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let err = reader.join().unwrap_or_default();
    // A line of its own: libtest prints "test … " before the output.
    println!("\nRSS-MEASURE {code} {}\nRSS-STDERR\n{err}RSS-END", ru.ru_maxrss);
}

/// `comer-port inspect --no-sha256 FILE`: (exit code, peak RSS KiB, stderr).
fn inspect_measured(p: &Path) -> (i32, u64, String) {
    run_measured(&["inspect".as_ref(), "--no-sha256".as_ref(), p.as_os_str()], &[])
}

/// Open `bytes` written as `name` in a fresh folder: the error, asserting nothing was
/// written beside the input.
fn refuse(name: &str, bytes: &[u8]) -> FormatError {
    let p = temp_file(name, bytes);
    let r = formats::open(&p);
    assert_eq!(siblings(&p), 1, "{name}: something was written beside the input");
    match r {
        Ok(ck) => panic!("{name}: accepted ({} tensors)", ck.tensors().len()),
        Err(e) => e,
    }
}

fn zip_with(pkl: &Pickle, recs: &[(&str, &[u8])]) -> Vec<u8> {
    torch_zip("archive", &pkl.0, "little", recs)
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn assert_budget(e: FormatError, which: &str) {
    match e {
        FormatError::OverBudget { knob, .. } => assert_eq!(knob, which),
        other => panic!("expected OverBudget({which}), got {other:?}"),
    }
}

// ---- 1. pickle memory amplification: one budget counts every byte materialised ----

/// A 1 MiB string memoised, then fetched `n` times into a list: `n` MiB of copies.
fn binget_of_a_big_string(n: usize) -> Pickle {
    let mut p = Pickle::new().str(&"a".repeat(1 << 20)).binput(0).op(b'0').mark();
    for _ in 0..n {
        p = p.binget(0);
    }
    p.op(b'l').stop()
}

#[test]
fn binget_copies_of_a_large_string_are_counted() {
    let b = zip_with(&binget_of_a_big_string(3000), &[]);
    assert_budget(refuse("m.pth", &b), "pickle");
    let p = temp_file("amp.pth", &b);
    let (code, rss, err) = inspect_measured(&p);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("COMER_PORT_PICKLE_BUDGET"), "the message says how to raise it: {err}");
    assert!(rss < AMPLIFICATION_RSS_KB, "peak RSS {rss} KiB");
}

#[test]
fn dup_copies_of_a_large_string_are_counted() {
    let mut p = Pickle::new().mark().str(&"a".repeat(1 << 20));
    for _ in 0..3000 {
        p = p.op(b'2');
    }
    let b = zip_with(&p.op(b'l').stop(), &[]);
    assert_budget(refuse("m.pth", &b), "pickle");
    let (code, rss, err) = inspect_measured(&temp_file("dup.pth", &b));
    assert_eq!(code, 3, "{err}");
    assert!(rss < AMPLIFICATION_RSS_KB, "peak RSS {rss} KiB");
}

#[test]
fn memoize_copies_of_a_container_are_counted() {
    // An immutable tuple of 200k items memoised 300 times: each MEMOIZE is a copy.
    let tuple = Pickle::new().mark().raw(&vec![b'N'; 200_000]).tuple().raw(&[0x94; 300]).stop();
    // A list memoised 300 times, then put in a tuple: each slot gets a copy of the finished
    // list when it leaves the stack.
    let list = Pickle::new()
        .mark()
        .op(b']')
        .mark()
        .raw(&vec![b'N'; 200_000])
        .op(b'e')
        .raw(&[0x94; 300])
        .tuple()
        .stop();
    for p in [tuple, list] {
        let b = zip_with(&p, &[]);
        assert_budget(refuse("m.pth", &b), "pickle");
        let (code, rss, err) = inspect_measured(&temp_file("memo.pth", &b));
        assert_eq!(code, 3, "{err}");
        assert!(rss < AMPLIFICATION_RSS_KB, "peak RSS {rss} KiB");
    }
}

#[test]
fn binget_pop_loop_is_bounded_in_time() {
    // 500k × (copy 1 MiB, drop it): live memory stays small, but without a cumulative
    // budget this is 500 GB of memcpy. Refused after a few dozen copies.
    let mut p = Pickle::new().str(&"a".repeat(1 << 20)).binput(0).op(b'0');
    p = p.raw(&b"h\x000".repeat(500_000)).none().stop();
    let t = Instant::now();
    assert_budget(refuse("m.pth", &zip_with(&p, &[])), "pickle");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[test]
fn pickle_budget_is_overridable() {
    // A real checkpoint needs a few hundred kB of budget: 1 kB refuses it, the default reads it.
    let src = fixture("sources/deit/deit_tiny.pth");
    let tight = ReadLimits { pickle_bytes: Some(1024), ..ReadLimits::default() };
    assert_budget(formats::open_with(&src, &tight).expect_err("over a 1 kB budget"), "pickle");
    formats::open_with(&src, &ReadLimits::default()).expect("default budget");
    // A raised budget admits what the default refuses (10 MiB of copies of a 1 MiB string).
    let p = temp_file("m.pth", &zip_with(&binget_of_a_big_string(10), &[]));
    let roomy = ReadLimits { pickle_bytes: Some(64 << 20), ..ReadLimits::default() };
    formats::open_with(&p, &roomy).expect("within a raised budget");
    let tiny = ReadLimits { pickle_bytes: Some(4 << 20), ..ReadLimits::default() };
    assert_budget(formats::open_with(&p, &tiny).expect_err("over 4 MiB"), "pickle");
    // The environment variable, through the binary.
    let (code, _, err) = run_measured(&["inspect".as_ref(), src.as_os_str()], &[("COMER_PORT_PICKLE_BUDGET", "1k")]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("1024"), "{err}");
    let (code, _, err) = run_measured(&["inspect".as_ref(), src.as_os_str()], &[("COMER_PORT_PICKLE_BUDGET", "lots")]);
    assert_eq!(code, 3, "an unparsable budget is refused: {err}");
    assert!(err.contains("COMER_PORT_PICKLE_BUDGET"), "{err}");
    assert_eq!(formats::parse_bytes("512M"), Some(512 << 20));
    assert_eq!(formats::parse_bytes("2G"), Some(2 << 30));
    assert_eq!(formats::parse_bytes("12"), Some(12));
    assert_eq!(formats::parse_bytes("x"), None);
}

#[test]
fn every_fixture_reads_under_the_default_budgets() {
    for rel in [
        "sources/deit/deit_tiny.pth",
        "sources/deit/deit_tiny_legacy.pth",
        "sources/deit/deit_tiny_fp16.pth",
        "sources/beitv2/beitv2_tiny_ft.pth",
        "sources/clip/clip_tiny_quickgelu_visual_jit.pt",
        "sources/augreg/augreg_tiny.npz",
        "sources/hf_vit/vit-tiny-in21k",
    ] {
        let ck = formats::open_with(&fixture(rel), &ReadLimits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(!ck.tensors().is_empty(), "{rel}");
    }
}

// ---- 2. shared-deflate bombs: overlapping members refused, one inflate budget ----

/// A `.pth` whose `n` storage records are central-directory entries over one deflate
/// stream of `size` zero bytes (the 170 kB → 3.3 GB shape).
fn shared_deflate_pth(n: usize, size: usize) -> Vec<u8> {
    let mut p = Pickle::new().empty_dict().mark();
    for i in 0..n {
        p = p.str(&format!("w{i}")).tensor("FloatStorage", &i.to_string(), (size / 4) as i64, 0, &[(size / 4) as i64], &[1]);
    }
    let p = p.setitems().stop();
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("archive/data.pkl", &p.0).expect("add");
    z.add("archive/byteorder", b"little").expect("add");
    z.add_deflated("archive/data/0", &vec![0u8; size]).expect("add");
    for i in 1..n {
        z.alias(&format!("archive/data/{i}"), 2);
    }
    z.finish().expect("finish").into_inner()
}

/// An `.npz` of `n` entries over one deflated `.npy` of `elems` f32 zeros.
fn shared_deflate_npz(n: usize, elems: usize) -> Vec<u8> {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add_deflated("a0.npy", &npy_f32_zeros(elems)).expect("add");
    for i in 1..n {
        z.alias(&format!("a{i}.npy"), 0);
    }
    z.finish().expect("finish").into_inner()
}

fn npy_f32_zeros(elems: usize) -> Vec<u8> {
    npy_f32(&vec![0u8; elems * 4])
}

/// A 1-D little-endian f32 `.npy` holding `data`.
fn npy_f32(data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", data.len() / 4);
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn shared_deflate_stream_in_a_pth() {
    let b = shared_deflate_pth(2000, 1_600_000);
    variant!(refuse("bomb.pth", &b), FormatError::OverlappingEntries { .. });
    let (code, rss, err) = inspect_measured(&temp_file("bomb.pth", &b));
    assert_eq!(code, 3, "{err}");
    assert!(rss < BOMB_RSS_KB, "peak RSS {rss} KiB");
}

#[test]
fn shared_deflate_stream_in_an_npz() {
    let b = shared_deflate_npz(2500, 350_000);
    variant!(refuse("bomb.npz", &b), FormatError::OverlappingEntries { .. });
    let (code, rss, err) = inspect_measured(&temp_file("bomb.npz", &b));
    assert_eq!(code, 3, "{err}");
    assert!(rss < BOMB_RSS_KB, "peak RSS {rss} KiB");
}

#[test]
fn two_names_over_one_stored_record() {
    // Stored, not deflated: still one member's bytes read as two storages.
    let p = Pickle::new()
        .empty_dict()
        .mark()
        .str("a")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .str("b")
        .tensor("FloatStorage", "1", 4, 0, &[4], &[1])
        .setitems()
        .stop();
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("archive/data.pkl", &p.0).expect("add");
    z.add("archive/data/0", &f32_bytes(4)).expect("add");
    z.alias("archive/data/1", 1);
    let b = z.finish().expect("finish").into_inner();
    match refuse("m.pth", &b) {
        FormatError::OverlappingEntries { entry, other, .. } => {
            let mut names = [entry, other];
            names.sort();
            assert_eq!(names, ["archive/data/0".to_string(), "archive/data/1".to_string()]);
        }
        other => panic!("expected OverlappingEntries, got {other:?}"),
    }
}

#[test]
fn one_name_listed_twice() {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add("archive/data.pkl", &Pickle::new().empty_dict().stop().0).expect("add");
    z.add("archive/data/0", &f32_bytes(4)).expect("add");
    z.add("archive/data/0", &f32_bytes(8)).expect("add");
    variant!(refuse("m.pth", &z.finish().expect("finish").into_inner()), FormatError::Corrupt { .. });
}

#[test]
fn inflate_budget_is_one_total_per_archive() {
    // Eight separate deflated members of 1 MiB each, in a file of a few kB: each is under
    // the budget (4 × file + 1 MiB), together they are over it.
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..8 {
        z.add_deflated(&format!("a{i}.npy"), &npy_f32_zeros(250_000)).expect("add");
    }
    let b = z.finish().expect("finish").into_inner();
    assert!(b.len() < 64 << 10, "{} bytes", b.len());
    assert_budget(refuse("many.npz", &b), "inflate");
    // Raised, the same archive reads.
    let p = temp_file("many.npz", &b);
    let roomy = ReadLimits { inflate_bytes: Some(16 << 20), ..ReadLimits::default() };
    let ck = formats::open_with(&p, &roomy).expect("within a raised inflate budget");
    assert_eq!(ck.tensors().len(), 8);
}

// ---- 3. tens of thousands of storages: member lookup is O(1) ----

/// A torch zip of `n` one-element storages (the shape of a sharded optimizer state).
fn many_storages(n: usize) -> Vec<u8> {
    let mut p = Pickle::new().empty_dict().mark();
    let mut recs = Vec::with_capacity(n);
    for i in 0..n {
        p = p.str(&format!("w{i}")).tensor("FloatStorage", &i.to_string(), 1, 0, &[1], &[1]);
        if i % 1000 == 999 {
            p = p.setitems().mark();
        }
        recs.push((i.to_string(), (i as f32).to_le_bytes().to_vec()));
    }
    let p = p.setitems().stop();
    let recs: Vec<(&str, &[u8])> = recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    zip_with(&p, &recs)
}

/// Best of three times to open `p`.
fn open_time(p: &Path, want: usize) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let ck = formats::open(p).expect("opens");
            assert_eq!(ck.tensors().len(), want);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn forty_thousand_storages_open_in_linear_time() {
    let small = temp_file("10k.pth", &many_storages(10_000));
    let big = temp_file("40k.pth", &many_storages(40_000));
    let (t10, t40) = (open_time(&small, 10_000), open_time(&big, 40_000));
    // Linear: about 4×; the quadratic lookup was 16× (0.29 s → 5.08 s in inspect).
    assert!(t40 < 8.0 * t10 + 0.05, "10k: {t10:.3} s, 40k: {t40:.3} s");
    let ck = formats::open(&big).expect("opens");
    let (_, sd) = ck.state_dict();
    let last = sd.iter().find(|(k, _)| k == "w39999").expect("last key");
    assert_eq!(last.1.to_f32(), vec![39999.0]);
}

// ---- 4. CRC of every member read, at every size, streamed ----

/// A torch zip at `p` with one f32 storage of `n` elements (values i % 1000), written
/// through a file (the point is size: above the old 64 MiB eager-CRC limit).
fn write_big_zip(p: &Path, n: usize) {
    let pkl = Pickle::new()
        .empty_dict()
        .str("w")
        .tensor("FloatStorage", "0", n as i64, 0, &[n as i64], &[1])
        .setitem()
        .stop();
    let f = std::fs::File::create(p).expect("create");
    let mut z = ZipWriter::new(std::io::BufWriter::new(f));
    z.add("archive/data.pkl", &pkl.0).expect("add");
    z.add("archive/byteorder", b"little").expect("add");
    z.add_with("archive/data/0", (n * 4) as u64, |sink| {
        let chunk: Vec<u8> = (0..1 << 16).flat_map(|i: usize| ((i % 1000) as f32).to_le_bytes()).collect();
        let mut left = n * 4;
        while left > 0 {
            let k = left.min(chunk.len());
            sink(&chunk[..k])?;
            left -= k;
        }
        Ok(())
    })
    .expect("add");
    z.finish().expect("finish").flush().expect("flush");
}

#[test]
fn flipped_bit_in_a_large_stored_record() {
    let d = tmpdir();
    let p = d.join("big.pth");
    let n = (65 << 20) / 4 + 1000; // just over 65 MiB of data
    write_big_zip(&p, n);
    let ck = formats::open(&p).expect("the intact archive reads");
    let t = &ck.tensors()[0].1;
    assert_eq!(t.numel(), n);
    drop(ck);
    // Flip one bit in the middle of the record.
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&p).expect("open");
    let at = std::fs::metadata(&p).expect("meta").len() / 2;
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x10], at).expect("write");
    f.flush().expect("flush");
    match formats::open(&p).expect_err("a flipped bit is refused") {
        FormatError::CrcMismatch { entry, .. } => assert_eq!(entry, "archive/data/0"),
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
    let (code, _, err) = inspect_measured(&p);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive/data/0") && err.contains("CRC"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `src` with one bit flipped in the middle of the stored record holding `key`'s bytes
/// (found by its intact bytes), copied into a new folder; returns (folder, copy, its bytes).
fn with_flipped_record(src: &Path, key: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let ck = formats::open(src).expect("intact");
    let (_, sd) = ck.state_dict();
    let data = sd.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key}")).1.to_le_bytes();
    let mut file = std::fs::read(src).expect("read");
    let at = file.windows(data.len()).position(|w| w == &data[..]).expect("record bytes in the file") + data.len() / 2;
    file[at] ^= 0x04;
    let d = tmpdir();
    let copy = d.join("source.pth");
    std::fs::write(&copy, &file).expect("write");
    (d, copy, file)
}

/// The import hashes the records it writes as it writes them, checks the ones it transforms
/// before reading them and every other record before verifying or publishing: a flipped
/// bit in any of the three kinds fails it with exit 3 naming the member, and leaves nothing.
#[test]
fn import_refuses_a_flipped_bit_in_a_written_transformed_or_unused_record() {
    let cfg = fixture("forward/det_tiny/case.json");
    let src = fixture("sources/deit/deit_tiny.pth");
    // written as is; resized (cls row dropped); not in the target at all.
    for key in ["blocks.0.mlp.fc1.weight", "pos_embed", "head.weight"] {
        for extra in [&[][..], &["--no-verify"][..]] {
            let (d, copy, bytes) = with_flipped_record(&src, key);
            let out = bin()
                .arg("import")
                .arg(&copy)
                .arg("--config")
                .arg(&cfg)
                .args(["-o", "out.safetensors", "--pth", "out.pth"])
                .args(extra)
                .current_dir(&d)
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{key} {extra:?}: {err}");
            assert!(err.contains("CRC mismatch") && err.contains("deit_tiny/data/"), "{key}: {err}");
            assert_eq!(names(&d), ["source.pth"], "{key} {extra:?}: nothing left behind");
            assert_eq!(std::fs::read(&copy).expect("source"), bytes, "source unchanged");
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    // The intact file imports (the same command).
    let d = tmpdir();
    let out = bin()
        .arg("import")
        .arg(&src)
        .arg("--config")
        .arg(&cfg)
        .args(["-o", "out.safetensors"])
        .current_dir(&d)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn flipped_bit_in_a_deflated_npz_member() {
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.add_deflated("w.npy", &npy_f32(&f32_bytes(4096))).expect("add");
    let mut b = z.finish().expect("finish").into_inner();
    formats::open(&temp_file("ok.npz", &b)).expect("the intact archive reads");
    // Change the central directory's CRC: the inflated bytes no longer match it.
    let cd = b.windows(4).position(|w| w == [0x50, 0x4b, 0x01, 0x02]).expect("central entry");
    b[cd + 16] ^= 0x01;
    match refuse("bad.npz", &b) {
        FormatError::CrcMismatch { entry, .. } => assert_eq!(entry, "w.npy"),
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
}

// ---- 6. files that are not files; symlinks out of a model folder ----

/// Open `p` on a thread; fail (instead of hanging the suite) if it takes over 5 s.
fn open_with_deadline(p: &Path) -> Result<formats::Checkpoint, FormatError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let q = p.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(formats::open(&q));
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("{}: opening hung", p.display()))
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn fifo_is_refused_without_hanging() {
    let p = tmpdir().join("model.pth");
    mkfifo(&p);
    match open_with_deadline(&p).expect_err("a FIFO is refused") {
        FormatError::NotAFile { path, kind } => {
            assert_eq!(path, p);
            assert!(kind.contains("FIFO"), "{kind}");
        }
        other => panic!("expected NotAFile, got {other:?}"),
    }
    let (code, _, err) = inspect_measured(&p);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("model.pth") && err.contains("FIFO"), "{err}");
}

#[test]
fn character_device_is_refused() {
    variant!(open_with_deadline(Path::new("/dev/null")).expect_err("refused"), FormatError::NotAFile { .. });
    variant!(open_with_deadline(Path::new("/dev/zero")).expect_err("refused"), FormatError::NotAFile { .. });
}

#[test]
fn socket_is_refused() {
    let p = tmpdir().join("model.safetensors");
    let _l = std::os::unix::net::UnixListener::bind(&p).expect("bind");
    variant!(open_with_deadline(&p).expect_err("refused"), FormatError::NotAFile { .. });
}

/// A folder holding `model.safetensors` copied from the tiny HF fixture, plus `config.json`.
fn hf_folder() -> PathBuf {
    let src = fixture("sources/hf_vit/vit-tiny-in21k");
    let d = tmpdir().join("model");
    std::fs::create_dir_all(&d).expect("dir");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(src.join(f), d.join(f)).expect("copy");
    }
    d
}

#[test]
fn hf_shard_symlinked_outside_the_folder() {
    let d = hf_folder();
    let outside = d.parent().expect("parent").join("elsewhere.safetensors");
    std::fs::rename(d.join("model.safetensors"), &outside).expect("move");
    std::os::unix::fs::symlink(&outside, d.join("model.safetensors")).expect("symlink");
    variant!(formats::open(&d).expect_err("refused"), FormatError::SymlinkEscape { .. });
    // And a config.json pointing at a file outside (its contents would be printed as metadata).
    let d2 = hf_folder();
    let secret = d2.parent().expect("parent").join("secret.json");
    std::fs::rename(d2.join("config.json"), &secret).expect("move");
    std::os::unix::fs::symlink(&secret, d2.join("config.json")).expect("symlink");
    variant!(formats::open(&d2).expect_err("refused"), FormatError::SymlinkEscape { .. });
    let (code, _, err) = inspect_measured(&d2);
    assert_eq!(code, 3, "{err}");
}

#[test]
fn hf_symlinks_inside_the_folder_and_the_hub_cache_layout_read() {
    // Inside the folder.
    let d = hf_folder();
    std::fs::rename(d.join("model.safetensors"), d.join("weights.bin.real")).expect("move");
    std::os::unix::fs::symlink("weights.bin.real", d.join("model.safetensors")).expect("symlink");
    assert!(!formats::open(&d).expect("inside the folder").tensors().is_empty());
    // The hub cache: models--org--name/snapshots/<rev>/file -> ../../blobs/<sha>.
    let repo = tmpdir().join("models--org--vit");
    let (snap, blobs) = (repo.join("snapshots/0123abc"), repo.join("blobs"));
    std::fs::create_dir_all(&snap).expect("dir");
    std::fs::create_dir_all(&blobs).expect("dir");
    let src = fixture("sources/hf_vit/vit-tiny-in21k");
    for (f, sha) in [("model.safetensors", "aa11"), ("config.json", "bb22")] {
        std::fs::copy(src.join(f), blobs.join(sha)).expect("copy");
        std::os::unix::fs::symlink(format!("../../blobs/{sha}"), snap.join(f)).expect("symlink");
    }
    assert!(!formats::open(&snap).expect("hub cache layout").tensors().is_empty());
}

#[test]
fn hf_fifo_shard_or_config_is_refused() {
    let d = hf_folder();
    std::fs::remove_file(d.join("model.safetensors")).expect("rm");
    mkfifo(&d.join("model.safetensors"));
    variant!(open_with_deadline(&d).expect_err("refused"), FormatError::NotAFile { .. });
    let d2 = hf_folder();
    std::fs::remove_file(d2.join("config.json")).expect("rm");
    mkfifo(&d2.join("config.json"));
    variant!(open_with_deadline(&d2).expect_err("refused"), FormatError::NotAFile { .. });
}

// ---- 8/9/11. writers: O_EXCL|O_NOFOLLOW temps, no-replace publish, cleanup ----

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_writers_one_destination_exactly_one_wins() {
    for round in 0..20 {
        let d = tmpdir();
        let dest = d.join("out.safetensors");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2u8)
            .map(|i| {
                let (dest, barrier) = (dest.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut f = AtomicFile::create(&dest, false).expect("both start before either publishes");
                    f.write_all(&vec![i; 100_000]).expect("write");
                    barrier.wait();
                    (i, f.commit())
                })
            })
            .collect();
        let results: Vec<(u8, Result<(), WriteError>)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        let winners: Vec<u8> = results.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(matches!(e, WriteError::Exists(_)), "the loser gets Exists: {e:?}");
            }
        }
        assert_eq!(std::fs::read(&dest).expect("winner's file"), vec![winners[0]; 100_000], "intact");
        assert_eq!(names(&d), ["out.safetensors"], "no temporary left");
    }
}

#[test]
fn two_processes_importing_to_one_output() {
    let cfg = fixture("forward/det_tiny/case.json");
    let src = fixture("sources/deit/deit_tiny.pth");
    for _ in 0..3 {
        let d = tmpdir();
        let out = d.join("a.safetensors");
        let spawn = || {
            bin()
                .arg("import")
                .arg(&src)
                .arg("--config")
                .arg(&cfg)
                .arg("-o")
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(codes, [Some(0), Some(4)], "{}\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
        let ck = formats::open(&out).expect("the winner's artifact is intact");
        assert!(!ck.tensors().is_empty());
        assert!(!names(&d).iter().any(|n| n.contains(atomic::TMP_MARK)), "{:?}", names(&d));
    }
}

#[test]
fn existing_folder_as_destination() {
    let d = tmpdir();
    let dest = d.join("out.safetensors");
    std::fs::create_dir(&dest).expect("mkdir");
    for force in [false, true] {
        match atomic::write_all(&dest, b"x", force) {
            Err(WriteError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::IsADirectory),
            other => panic!("force={force}: expected an IsADirectory error, got {other:?}"),
        }
    }
    assert_eq!(names(&d), ["out.safetensors"], "nothing else written");
    assert!(dest.is_dir());
}

#[test]
fn a_failed_publish_removes_the_temporary() {
    // The destination becomes a folder while the file is written: rename fails (forced).
    let d = tmpdir();
    let dest = d.join("out.bin");
    let mut f = AtomicFile::create(&dest, true).expect("create");
    f.write_all(b"data").expect("write");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::write(dest.join("keep"), b"k").expect("write");
    variant!(f.commit().expect_err("cannot replace a non-empty folder"), WriteError::Io { .. });
    assert_eq!(names(&d), ["out.bin"], "temporary removed");
    // Not forced: another writer published first; ours is dropped, theirs kept.
    let dest = d.join("late.bin");
    let mut f = AtomicFile::create(&dest, false).expect("create");
    f.write_all(b"mine").expect("write");
    std::fs::write(&dest, b"theirs").expect("write");
    variant!(f.commit().expect_err("exists"), WriteError::Exists(_));
    assert_eq!(std::fs::read(&dest).expect("read"), b"theirs");
    assert_eq!(names(&d), ["late.bin", "out.bin"], "temporary removed");
    // Dropped without commit.
    let f = AtomicFile::create(&d.join("never.bin"), false).expect("create");
    drop(f);
    assert_eq!(names(&d), ["late.bin", "out.bin"]);
}

#[test]
fn symlink_at_the_destination_is_replaced_not_followed() {
    let d = tmpdir();
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"precious").expect("write");
    let dest = d.join("out.json");
    std::os::unix::fs::symlink(&victim, &dest).expect("symlink");
    variant!(atomic::write_all(&dest, b"{}", false).expect_err("a link counts as existing"), WriteError::Exists(_));
    // A dangling link too.
    let dangling = d.join("dangling.json");
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).expect("symlink");
    variant!(atomic::write_all(&dangling, b"{}", false).expect_err("exists"), WriteError::Exists(_));
    assert!(!d.join("nowhere").exists(), "never created through the link");
    atomic::write_all(&dest, b"{}", true).expect("forced: the link itself is replaced");
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious", "the link's target is untouched");
    assert_eq!(std::fs::read(&dest).expect("read"), b"{}");
    assert!(!std::fs::symlink_metadata(&dest).expect("meta").file_type().is_symlink());
}

#[test]
fn stale_temporaries_of_dead_processes_are_cleaned() {
    let d = tmpdir();
    let dest = d.join("out.safetensors");
    // A PID that has exited: a child we spawned and reaped.
    let dead = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().expect("wait");
    let stale = d.join(format!(".out.safetensors{}{dead_pid}-00ff00ff00ff00ff", atomic::TMP_MARK));
    std::fs::write(&stale, vec![0u8; 4096]).expect("write");
    // A live process's temporary (PID 1 always runs) and another destination's stale one.
    let live = d.join(format!(".out.safetensors{}1-0123456789abcdef", atomic::TMP_MARK));
    std::fs::write(&live, b"in progress").expect("write");
    let other = d.join(format!(".other.bin{}{dead_pid}-0123456789abcdef", atomic::TMP_MARK));
    std::fs::write(&other, b"x").expect("write");
    // A symbolic link shaped like a stale temporary is left alone (never followed).
    let victim = d.join("victim");
    std::fs::write(&victim, b"v").expect("write");
    let link = d.join(format!(".out.safetensors{}{dead_pid}-abcdefabcdefabcd", atomic::TMP_MARK));
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");

    atomic::write_all(&dest, b"new", false).expect("write");
    assert!(!stale.exists(), "the dead writer's temporary is removed");
    assert!(live.exists(), "a live writer's temporary is kept");
    assert!(other.exists(), "other destinations' temporaries are not this write's business");
    assert!(std::fs::symlink_metadata(&link).is_ok() && victim.exists());
    assert_eq!(std::fs::read(&dest).expect("read"), b"new");
}

#[test]
fn temporary_names_carry_the_pid() {
    let d = tmpdir();
    let dest = d.join("x.onnx");
    let f = AtomicFile::create(&dest, false).expect("create");
    let name = f.tmp_path().file_name().expect("name").to_string_lossy().into_owned();
    let prefix = format!(".x.onnx{}{}-", atomic::TMP_MARK, std::process::id());
    assert!(name.starts_with(&prefix), "{name}");
    assert!(name[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    drop(f);
    assert!(names(&d).is_empty());
}

// ---- shared by 5, 7, 10 and 12: run the binary, check what it left ----

/// `comer-port ARGS…`: (exit code, stdout, stderr), asserted not to have panicked.
fn cli(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let o = bin().args(args).output().expect("runs");
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    let code = o.status.code().unwrap_or(-1);
    assert!(code != 101 && !err.contains("panicked"), "{args:?} panicked ({code}):\n{err}");
    (code, out, err)
}

/// `&str`s as `OsStr`s for [`cli`].
fn os<'a>(args: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
    args.iter().map(|a| std::ffi::OsStr::new(*a)).collect()
}

/// Every file under `dir` (recursively) with its bytes: what a refused command must leave
/// exactly as it was.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() {
                out.push((p.clone(), std::fs::read_link(&p).expect("link").into_os_string().into_encoded_bytes()));
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// A folder holding copies of the DeiT-tiny source, the det_tiny config, weights and inputs.
fn workdir() -> PathBuf {
    let d = tmpdir();
    std::fs::copy(fixture("sources/deit/deit_tiny.pth"), d.join("src.pth")).expect("copy");
    for f in ["case.json", "weights.safetensors", "inputs.safetensors"] {
        std::fs::copy(fixture(&format!("forward/det_tiny/{f}")), d.join(f)).expect("copy");
    }
    d
}

// ---- 5. config values: one range per field, checked before anything is built ----

/// det_tiny's case.json with the given constructor keywords replaced.
fn bad_config(changes: &[(&str, serde_json::Value)]) -> String {
    let text = std::fs::read_to_string(fixture("forward/det_tiny/case.json")).expect("fixture");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for (k, x) in changes {
        v["constructor_kwargs"][*k] = x.clone();
    }
    v.to_string()
}

/// Out-of-range and inconsistent configs, each with the field its message must name.
fn bad_configs() -> Vec<(&'static str, String)> {
    use serde_json::json;
    let big = json!(1_000_000_000u64);
    vec![
        ("n_points", bad_config(&[("n_points", json!(0))])),
        ("conv_inplane", bad_config(&[("conv_inplane", json!(0))])),
        ("window_size[0]", bad_config(&[("window_attn", json!(true)), ("window_size", big.clone())])),
        ("depth", bad_config(&[("depth", big.clone())])),
        ("extra_num", bad_config(&[("extra_num", big.clone())])),
        ("cffn_ratio", bad_config(&[("cffn_ratio", json!(1e9))])),
        ("pretrain_size", bad_config(&[("pretrain_size", big.clone())])),
        ("img_size", bad_config(&[("img_size", big)])),
        ("num_heads", bad_config(&[("num_heads", json!(5))])),
        ("deform_num_heads", bad_config(&[("deform_num_heads", json!(7))])),
        ("interaction_indexes", bad_config(&[("interaction_indexes", json!([[0, 0], [2, 2], [1, 1], [3, 3]]))])),
        ("mlp_ratio", bad_config(&[("mlp_ratio", json!(0.0))])),
        ("img_size", bad_config(&[("img_size", json!(72))])),
    ]
}

#[test]
fn config_values_out_of_range_are_usage_errors_in_every_subcommand() {
    let d = workdir();
    let out = tmpdir();
    for (i, (field, text)) in bad_configs().into_iter().enumerate() {
        let cfg = d.join(format!("bad{i}.json"));
        std::fs::write(&cfg, &text).expect("write");
        let before = snapshot(&d);
        let c = cfg.to_str().expect("utf-8");
        let (src, w, inp) = (d.join("src.pth"), d.join("weights.safetensors"), d.join("inputs.safetensors"));
        let (src, w, inp) = (src.to_str().expect("utf-8"), w.to_str().expect("utf-8"), inp.to_str().expect("utf-8"));
        let o = |n: &str| out.join(n).to_string_lossy().into_owned();
        let runs: Vec<Vec<String>> = vec![
            vec!["import".into(), src.into(), "--config".into(), c.into(), "-o".into(), o("a.safetensors"), "--pth".into(), o("a.pth")],
            vec!["verify".into(), w.into(), "--config".into(), c.into()],
            vec!["run".into(), "--weights".into(), w.into(), "--config".into(), c.into(), "--input".into(), inp.into(), "-o".into(), o("r.safetensors")],
            vec!["export".into(), "onnx".into(), w.into(), "--config".into(), c.into(), "--input-size".into(), "64x64".into(), "-o".into(), o("m.onnx")],
        ];
        for args in runs {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, _, err) = cli(&os(&a));
            assert_eq!(code, 2, "{field}: {a:?}: {err}");
            assert!(err.contains(&format!("bad{i}.json")) && err.contains(field), "{field}: names the file and the field: {err}");
            assert!(names(&out).is_empty(), "{field}: {a:?} wrote {:?}", names(&out));
        }
        assert_eq!(snapshot(&d), before, "{field}: the inputs are unchanged");
    }
}

#[test]
fn a_refused_config_names_the_value_and_the_allowed_range() {
    let d = workdir();
    let cfg = d.join("c.json");
    std::fs::write(&cfg, bad_config(&[("n_points", serde_json::json!(0))])).expect("write");
    let w = d.join("weights.safetensors");
    let (code, _, err) = cli(&["verify".as_ref(), w.as_os_str(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 2);
    assert!(err.contains("n_points = 0 is out of range (allowed: 1..=32)"), "{err}");
}

/// A tensor as (name, dtype, shape, little-endian bytes), for [`safetensors_of`].
type Owned = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Every tensor of a checkpoint's state dict.
fn tensors_of(p: &Path) -> Vec<Owned> {
    let ck = formats::open(p).expect("fixture");
    let (_, sd) = ck.state_dict();
    sd.iter()
        .map(|(n, t)| {
            let dt = match t.dtype {
                formats::DType::F32 => safetensors::Dtype::F32,
                formats::DType::I64 => safetensors::Dtype::I64,
                other => panic!("{n}: {other:?} not expected in the fixture"),
            };
            (n.clone(), dt, t.shape.clone(), t.to_le_bytes())
        })
        .collect()
}

/// A safetensors file of `tensors`, with `meta` as its metadata.
fn safetensors_of(tensors: &[Owned], meta: Option<std::collections::HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize(views, meta).expect("serialize")
}

/// det_tiny's weights with `comer_port.config` metadata recording `config`.
fn artifact_recording(config: &str) -> PathBuf {
    let meta = std::collections::HashMap::from([("comer_port.config".to_string(), config.to_string())]);
    let bytes = safetensors_of(&tensors_of(&fixture("forward/det_tiny/weights.safetensors")), Some(meta));
    temp_file("recorded.safetensors", &bytes)
}

#[test]
fn a_recorded_config_out_of_range_is_bad_input() {
    let inputs = fixture("forward/det_tiny/inputs.safetensors");
    for (field, text) in bad_configs() {
        let art = artifact_recording(&text);
        let out = art.parent().expect("dir").to_path_buf();
        let before = snapshot(&out);
        let (r, m) = (out.join("r.safetensors"), out.join("m.onnx"));
        let runs: Vec<Vec<&std::ffi::OsStr>> = vec![
            vec!["verify".as_ref(), art.as_os_str()],
            vec!["run".as_ref(), "--weights".as_ref(), art.as_os_str(), "--input".as_ref(), inputs.as_os_str(), "-o".as_ref(), r.as_os_str()],
            vec!["export".as_ref(), "onnx".as_ref(), art.as_os_str(), "--input-size".as_ref(), "64x64".as_ref(), "-o".as_ref(), m.as_os_str()],
        ];
        for args in runs {
            let (code, _, err) = cli(&args);
            assert_eq!(code, 3, "{field}: {args:?}: {err}");
            assert!(err.contains("recorded.safetensors") && err.contains("comer_port.config") && err.contains(field), "{field}: {err}");
            assert!(err.contains("--config"), "says how to override it: {err}");
        }
        assert_eq!(snapshot(&out), before, "{field}: nothing written, the artifact unchanged");
    }
    // The fix the message names: another config for the same weights.
    let art = artifact_recording(&bad_configs()[0].1);
    let r = art.with_file_name("r.safetensors");
    let cfg = fixture("forward/det_tiny/case.json");
    let (code, _, err) = cli(&[
        "run".as_ref(), "--weights".as_ref(), art.as_os_str(), "--config".as_ref(), cfg.as_os_str(),
        "--input".as_ref(), inputs.as_os_str(), "-o".as_ref(), r.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_config_file_that_is_endless_or_a_fifo_is_refused_without_hanging() {
    let d = workdir();
    let fifo = d.join("fifo.json");
    mkfifo(&fifo);
    let w = d.join("weights.safetensors");
    for cfg in [Path::new("/dev/zero"), fifo.as_path()] {
        let mut child = bin()
            .args(["verify".as_ref(), w.as_os_str(), "--config".as_ref(), cfg.as_os_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{}: verify --config hung", cfg.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(2), "{}", cfg.display());
    }
}

#[test]
fn sizes_on_the_command_line_are_bounded() {
    let w = fixture("forward/det_tiny/weights.safetensors");
    let cfg = fixture("forward/det_tiny/case.json");
    let out = tmpdir().join("m.onnx");
    for (flag, value) in [("--input-size", "100000x64"), ("--input-size", "0x64"), ("--batch", "0"), ("--batch", "100000")] {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["export".as_ref(), "onnx".as_ref(), w.as_os_str(), "--config".as_ref(), cfg.as_os_str(), "-o".as_ref(), out.as_os_str()];
        args.extend(os(&[flag, value]));
        if flag == "--batch" {
            args.extend(os(&["--input-size", "64x64"]));
        }
        let (code, _, err) = cli(&args);
        assert_eq!(code, 2, "{flag} {value}: {err}");
    }
    assert!(!out.exists());
    for size in ["0", "100000", "33"] {
        let (code, _, err) = cli(&os(&["bench", "--preset", "vit-comer-t-seg", "--size", size, "--runs", "1"]));
        assert_eq!(code, 2, "bench --size {size}: {err}");
    }
}

#[test]
fn every_preset_and_fixture_config_is_still_accepted() {
    use comer_port::target::{self, Basis, TargetSpec};
    let d = tmpdir();
    let art = fixture("forward/det_tiny/weights.safetensors");
    for p in comer_port::model::presets::PRESETS {
        let cfg = comer_port::model::presets::preset(p.name).expect("preset");
        let file = d.join(format!("{}.json", p.name));
        std::fs::write(&file, cfg.to_case_json().to_string()).expect("write");
        let again = target::resolve(&TargetSpec::ConfigFile(file), Basis::Artifact(&art)).expect(p.name);
        assert_eq!(again, cfg, "{}", p.name);
    }
    for case in ["det_tiny", "det_tiny_cfi_window", "seg_tiny", "beit_tiny"] {
        let dir = fixture(&format!("forward/{case}"));
        let out = d.join(format!("{case}.safetensors"));
        let (code, _, err) = cli(&[
            "run".as_ref(), "--weights".as_ref(), dir.join("weights.safetensors").as_os_str(), "--config".as_ref(),
            dir.join("case.json").as_os_str(), "--input".as_ref(), dir.join("inputs.safetensors").as_os_str(), "-o".as_ref(), out.as_os_str(),
        ]);
        assert_eq!(code, 0, "{case}: {err}");
    }
}

// ---- 7. terminal escapes: untrusted names are escaped in every human-readable output ----

/// A key that would clear the screen and print a fake verdict, and one with a right-to-left
/// override.
const EVIL_KEYS: [&str; 2] = ["\u{1b}[2J\u{1b}[Hverdict passed\n", "evil\u{202e}yek\u{9b}31m"];

/// No raw control character in `text` except line breaks between lines.
fn assert_no_controls(what: &str, text: &str) {
    let bad: Vec<char> = text.chars().filter(|&c| c != '\n' && comer_port::text::needs_escape(c)).collect();
    assert!(bad.is_empty(), "{what}: raw control characters {bad:?} in:\n{}", text.escape_debug());
}

/// A safetensors file of `tensors` plus one f32 tensor per [`EVIL_KEYS`] entry.
fn safetensors_with_evil_keys(tensors: &[Owned]) -> Vec<u8> {
    let zero = 0f32.to_le_bytes().to_vec();
    let mut all = tensors.to_vec();
    all.extend(EVIL_KEYS.iter().map(|k| (k.to_string(), safetensors::Dtype::F32, vec![1], zero.clone())));
    safetensors_of(&all, None)
}

#[test]
fn evil_key_and_file_names_are_escaped_in_inspect() {
    // A safetensors file named with an escape sequence and a line break, and a .pth.
    let d = tmpdir();
    let st = d.join("ev\u{1b}[31mil\n.safetensors");
    std::fs::write(&st, safetensors_with_evil_keys(&[])).expect("write");
    let mut pkl = Pickle::new().empty_dict().mark();
    for (i, k) in EVIL_KEYS.iter().enumerate() {
        pkl = pkl.str(k).tensor("FloatStorage", &i.to_string(), 1, 0, &[1], &[1]);
    }
    let pkl = pkl.op(b'u').stop();
    let zero = 0f32.to_le_bytes();
    let pth = d.join("evil\u{202e}.pth");
    std::fs::write(&pth, zip_with(&pkl, &[("0", &zero), ("1", &zero)])).expect("write");
    for file in [&st, &pth] {
        let (code, out, err) = cli(&["inspect".as_ref(), file.as_os_str(), "--all".as_ref()]);
        assert_eq!(code, 0, "{err}");
        assert_no_controls("inspect stdout", &out);
        assert_no_controls("inspect stderr", &err);
        assert!(out.contains("\\x1b[2J\\x1b[Hverdict passed\\n") && out.contains("evil\\u{202e}yek\\u{9b}31m"), "{out}");
        assert!(!out.lines().any(|l| l.starts_with("verdict")), "no line of the key's own: {out}");
        let (code, json, _) = cli(&["inspect".as_ref(), file.as_os_str(), "--json".as_ref()]);
        assert_eq!(code, 0);
        assert_no_controls("inspect --json", &json);
        let v: serde_json::Value = serde_json::from_str(&json).expect("still JSON");
        let listed: Vec<&str> = v["tensors"].as_array().expect("tensors").iter().filter_map(|t| t["name"].as_str()).collect();
        for k in EVIL_KEYS {
            assert!(listed.iter().any(|n| n.ends_with(k)), "JSON keeps the exact key {k:?}: {listed:?}");
        }
    }
    // A file that is refused names its path escaped too.
    let bad = d.join("x\u{1b}]0;pwned\u{7}.pth");
    std::fs::write(&bad, b"not a checkpoint at all").expect("write");
    let (code, out, err) = cli(&["inspect".as_ref(), bad.as_os_str()]);
    assert_eq!(code, 3);
    assert_no_controls("refused inspect", &format!("{out}{err}"));
    assert!(err.contains("x\\x1b]0;pwned\\x07.pth"), "{err}");
}

#[test]
fn evil_key_names_are_escaped_in_import_verify_and_run() {
    let d = tmpdir();
    // import: the DeiT source with two keys no rule uses: refused, naming the key escaped.
    let src = d.join("deit\u{1b}[2J.safetensors");
    std::fs::write(&src, safetensors_with_evil_keys(&tensors_of(&fixture("sources/deit/deit_tiny.pth")))).expect("write");
    let cfg = fixture("forward/det_tiny/case.json");
    let out = d.join("a.safetensors");
    let before = snapshot(&d);
    let (code, stdout, err) =
        cli(&["import".as_ref(), src.as_os_str(), "--config".as_ref(), cfg.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, 3, "{err}");
    assert_no_controls("import", &format!("{stdout}{err}"));
    assert!(err.contains("source key '\\x1b[2J\\x1b[Hverdict passed\\n'") || err.contains("evil\\u{202e}"), "{err}");
    assert_eq!(snapshot(&d), before, "nothing written, the source unchanged");
    // verify and run: an artifact carrying an extra key: failed checks and errors name it.
    let art = d.join("art\u{1b}]0;t\u{7}.safetensors");
    std::fs::write(&art, safetensors_with_evil_keys(&tensors_of(&fixture("forward/det_tiny/weights.safetensors")))).expect("write");
    let (code, stdout, err) = cli(&["verify".as_ref(), art.as_os_str(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert_no_controls("verify", &format!("{stdout}{err}"));
    assert!(stdout.contains("\\x1b[2J\\x1b[Hverdict passed\\n"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("verdict passed")), "{stdout}");
    let (code, json, _) = cli(&["verify".as_ref(), art.as_os_str(), "--config".as_ref(), cfg.as_os_str(), "--json".as_ref()]);
    assert_eq!(code, 1);
    assert_no_controls("verify --json", &json);
    serde_json::from_str::<serde_json::Value>(&json).expect("still JSON");
    let r = d.join("r.safetensors");
    let input = fixture("forward/det_tiny/inputs.safetensors");
    let (code, stdout, err) = cli(&[
        "run".as_ref(), "--weights".as_ref(), art.as_os_str(), "--config".as_ref(), cfg.as_os_str(),
        "--input".as_ref(), input.as_os_str(), "-o".as_ref(), r.as_os_str(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert_no_controls("run", &format!("{stdout}{err}"));
    assert!(!r.exists());
}

// ---- 10/12. outputs: each its own file, none an input, checked before the first byte ----

/// `comer-port ARGS…` (paths relative to `dir`) refused as a usage error naming `says`,
/// leaving every file under `dir` as it was.
fn refused_in(dir: &Path, args: &[&str], says: &[&str]) {
    let before = snapshot(dir);
    let o = bin().current_dir(dir).args(args).output().expect("runs");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.code() != Some(101) && !err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: names {s:?}: {err}");
    }
    assert_eq!(snapshot(dir), before, "{args:?}: nothing written, nothing replaced");
}

#[test]
fn outputs_that_are_one_file_are_refused_before_any_is_written() {
    let d = workdir();
    for force in [&[][..], &["--force"][..]] {
        let with = |a: &[&'static str]| [a, force].concat();
        let imp = ["import", "src.pth", "--config", "case.json"];
        refused_in(&d, &with(&[&imp[..], &["-o", "x.safetensors", "--pth", "x.safetensors"]].concat()), &["--pth output x.safetensors", "-o output"]);
        refused_in(&d, &with(&[&imp[..], &["-o", "x.safetensors", "--report", "./x.safetensors"]].concat()), &["--report", "-o"]);
        refused_in(&d, &with(&[&imp[..], &["-o", "x.safetensors", "--pth", "x.config.json"]].concat()), &["--pth", "config written beside"]);
        refused_in(&d, &with(&[&imp[..], &["-o", "x.safetensors", "--report", "r.txt"]].concat()), &["text summary of --report", "--report output"]);
        refused_in(&d, &with(&[&imp[..], &["-o", "p.safetensors", "--report", "p.config.json"]].concat()), &["--report", "config written beside"]);
        let run = ["run", "--weights", "weights.safetensors", "--config", "case.json", "--input", "inputs.safetensors"];
        refused_in(&d, &with(&[&run[..], &["-o", "o.png", "--viz", "o.png"]].concat()), &["--viz", "-o output"]);
    }
    // A link between two outputs that already exist: one file under two names.
    std::fs::write(d.join("old.safetensors"), b"old").expect("write");
    std::fs::hard_link(d.join("old.safetensors"), d.join("old.pth")).expect("link");
    std::os::unix::fs::symlink("old.safetensors", d.join("old.json")).expect("symlink");
    let imp = ["import", "src.pth", "--config", "case.json", "-o", "old.safetensors", "--force"];
    refused_in(&d, &[&imp[..], &["--pth", "old.pth"]].concat(), &["--pth", "link"]);
    refused_in(&d, &[&imp[..], &["--report", "old.json"]].concat(), &["--report", "link"]);
}

#[test]
fn outputs_never_replace_an_input_even_with_force() {
    let d = workdir();
    std::fs::hard_link(d.join("src.pth"), d.join("hard.pth")).expect("link");
    std::os::unix::fs::symlink("src.pth", d.join("soft.pth")).expect("symlink");
    std::os::unix::fs::symlink("weights.safetensors", d.join("w-link.onnx.data")).expect("symlink");
    let imp = ["import", "src.pth", "--config", "case.json", "--force"];
    for extra in [
        &["-o", "src.pth"][..],
        &["-o", "./sub/../src.pth"],
        &["-o", "a.safetensors", "--pth", "src.pth"],
        &["-o", "a.safetensors", "--report", "src.pth"],
        &["-o", "hard.pth"],
        &["-o", "soft.pth"],
    ] {
        refused_in(&d, &[&imp[..], extra].concat(), &["is the source", "--force"]);
    }
    refused_in(&d, &[&imp[..], &["-o", "case.json"]].concat(), &["is the --config file"]);
    // A Hugging Face folder: nothing is written into it (its config.json included).
    let hf = d.join("hf");
    std::fs::create_dir(&hf).expect("dir");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("sources/hf_vit/vit-tiny-in21k").join(f), hf.join(f)).expect("copy");
    }
    std::os::unix::fs::symlink("hf", d.join("hf-link")).expect("symlink");
    for extra in [&["-o", "hf/config.json"][..], &["-o", "x.safetensors", "--pth", "hf/x.pth"], &["-o", "hf-link/x.safetensors"], &["-o", "hf"]] {
        refused_in(&d, &[&["import", "hf", "--config", "case.json", "--force"][..], extra].concat(), &["the source"]);
    }
    // run and export against their inputs.
    let run = ["run", "--weights", "weights.safetensors", "--config", "case.json", "--input", "inputs.safetensors", "--force"];
    refused_in(&d, &[&run[..], &["-o", "weights.safetensors"]].concat(), &["the --weights file"]);
    refused_in(&d, &[&run[..], &["--viz", "inputs.safetensors"]].concat(), &["the --input file"]);
    refused_in(&d, &[&run[..], &["-o", "case.json"]].concat(), &["the --config file"]);
    let export = ["export", "onnx", "weights.safetensors", "--config", "case.json", "--input-size", "64x64", "--force"];
    refused_in(&d, &[&export[..], &["-o", "weights.safetensors"]].concat(), &["the artifact"]);
    refused_in(&d, &[&export[..], &["-o", "w-link.onnx"]].concat(), &["external data file", "the artifact"]);
}

#[test]
fn demo_refuses_a_folder_whose_names_are_linked() {
    let d = tmpdir();
    std::fs::write(d.join("deit_tiny.pth"), b"precious").expect("write");
    std::fs::hard_link(d.join("deit_tiny.pth"), d.join("pyramid.png")).expect("link");
    refused_in(&d, &["demo", "--dir", ".", "--force"], &["pyramid.png", "deit_tiny.pth"]);
}
