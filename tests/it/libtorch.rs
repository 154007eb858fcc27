//! `--libtorch` (issue 17): with the cargo feature, every torch fixture is read identically by
//! comer-port's readers and by PyTorch itself (torch.load / torch::jit::load), a written
//! `.pth` reads back identically, and an altered one is caught naming the key. Without the
//! feature, `--libtorch` is a usage error saying how to build it. Both builds: `--help` says
//! the flag is for trusted files. The feature's tests run under
//! `cargo test --release --features libtorch --test it libtorch::` (docs/libtorch.md).

use crate::util::bin;

#[test]
fn help_says_libtorch_is_for_trusted_files_only() {
    for cmd in ["inspect", "verify"] {
        let out = bin().args([cmd, "--help"]).output().expect("run");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} --help");
        for needle in ["--libtorch", "ONLY FOR FILES YOU TRUST", "CVE-2026-24747", "CVE-2025-32434", "runs its code"] {
            assert!(help.contains(needle), "`{cmd} --help` lacks {needle:?}:\n{help}");
        }
    }
}

#[cfg(not(feature = "libtorch"))]
#[test]
fn without_the_feature_libtorch_is_a_usage_error_saying_how_to_build() {
    let src = crate::util::fixture("sources/deit/deit_tiny.pth");
    let runs: [Vec<std::ffi::OsString>; 2] = [
        vec!["inspect".into(), "--libtorch".into(), src.clone().into()],
        vec!["verify".into(), src.clone().into(), "--libtorch".into()],
    ];
    for args in runs {
        let out = bin().args(&args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("built without the `libtorch` cargo feature"), "{err}");
        assert!(err.contains("--features libtorch") && err.contains("torch==2.13"), "{err}");
        assert!(out.stdout.is_empty(), "nothing printed before the refusal");
    }
}

#[cfg(feature = "libtorch")]
mod with_feature {
    use std::path::{Path, PathBuf};

    use comer_port::formats::{self, Format};
    use comer_port::libtorch::{self, LibtorchError};

    use crate::util::{bin, fixture, tmpdir};

    /// The tiny detection config both imports target.
    const CASE: &str = "forward/det_tiny/case.json";

    /// Every torch.save / TorchScript file under `fixtures/sources` and `fixtures/generated`.
    fn torch_fixtures() -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).expect("fixtures readable").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "pth" || x == "pt" || x == "bin") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&fixture("sources"), &mut out);
        walk(&fixture("generated"), &mut out);
        out.sort();
        out
    }

    #[test]
    fn every_torch_fixture_reads_identically_through_both_readers() {
        let files = torch_fixtures();
        // 16 .pth/.pt files of 7 families (the others ship safetensors, npz or folders) and the 4
        // generated torch files.
        assert!(files.len() >= 20, "{} files: {files:?}", files.len());
        let mut formats_seen = std::collections::BTreeSet::new();
        for f in &files {
            let ck = formats::open(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            // torch.save(model): PyTorch reads it only by constructing the model (not done).
            if ck.full_model().is_some() {
                continue;
            }
            formats_seen.insert(ck.format.name());
            let theirs = libtorch::read(f, ck.format).unwrap_or_else(|e| panic!("{e}"));
            let ours = ck.tensors();
            let cross = libtorch::cross_read(&ours, &theirs);
            assert!(cross.agrees(), "{}: {:?}", f.display(), cross.first_difference());
            assert_eq!(cross.rows.len(), ours.len());
            assert!(!ours.is_empty(), "{}", f.display());
        }
        // Zip (little and big endian), legacy (with a storage view) and TorchScript all ran.
        for fmt in ["torch-zip", "torch-legacy", "torchscript"] {
            assert!(formats_seen.contains(fmt), "{formats_seen:?}");
        }
    }

    #[test]
    fn the_generated_dtype_fixture_holds_every_dtype_and_matches_across_byte_orders() {
        let le = fixture("generated/dtypes_le.pth");
        let be = fixture("generated/dtypes_be.pth");
        let theirs_be = libtorch::read(&be, Format::TorchZip).expect("read be");
        let dtypes: std::collections::BTreeSet<&str> = theirs_be.iter().map(|t| t.dtype.as_str()).collect();
        for d in ["f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool"] {
            assert!(dtypes.contains(d), "{dtypes:?}");
        }
        // torch.load swaps the big-endian archive: its tensors equal the little-endian file's.
        let ours_le = formats::open(&le).expect("open le");
        let cross = libtorch::cross_read(&ours_le.tensors(), &theirs_be);
        assert!(cross.agrees(), "{:?}", cross.first_difference());
    }

    #[test]
    fn a_difference_is_named_by_key_and_kind() {
        let ours_ck = formats::open(&fixture("sources/deit/deit_tiny.pth")).expect("open");
        let ours = ours_ck.tensors();
        // Another dtype under every key.
        let fp16 = libtorch::read(&fixture("sources/deit/deit_tiny_fp16.pth"), Format::TorchZip).expect("read");
        let cross = libtorch::cross_read(&ours, &fp16);
        let (i, row) = cross.first_difference().expect("differs");
        assert_eq!((i, row.key.as_str()), (0, "model.cls_token"));
        assert_eq!(row.differs.as_deref(), Some("dtype f32 here, f16 through libtorch"));
        // Keys only one side has (the distilled model has a second token and a longer table).
        let distilled = libtorch::read(&fixture("sources/deit/deit_tiny_distilled.pth"), Format::TorchZip).expect("read");
        let cross = libtorch::cross_read(&ours, &distilled);
        let why = |k: &str| cross.rows.iter().find(|r| r.key == k).and_then(|r| r.differs.clone());
        assert_eq!(why("model.dist_token").as_deref(), Some("comer-port's reader has no tensor under this key"));
        assert!(cross.rows.iter().any(|r| r.key == "model.dist_token" && r.ours.is_none() && r.libtorch.is_some()));
        let pos = why("model.pos_embed").expect("pos_embed differs");
        assert!(pos.starts_with("shape [1, 17, 48] here, [1, 18, 48]"), "{pos}");
        // The same file with one tensor left out on libtorch's side: only that key differs.
        let same = libtorch::read(&fixture("sources/deit/deit_tiny.pth"), Format::TorchZip).expect("read");
        let missing: Vec<_> = same.into_iter().filter(|t| t.name != "model.blocks.0.norm1.weight").collect();
        let cross = libtorch::cross_read(&ours, &missing);
        let differing: Vec<_> = cross.rows.iter().filter(|r| r.differs.is_some()).collect();
        assert_eq!(differing.len(), 1, "{differing:?}");
        assert_eq!(differing[0].key, "model.blocks.0.norm1.weight");
        assert_eq!(differing[0].differs.as_deref(), Some("libtorch has no tensor under this key"));
        // Side by side: the verdict, a header, one line per key, `!=` where they differ.
        let text = cross.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "libtorch   DIFFERS on 1 of 56 keys (first `model.blocks.0.norm1.weight`: libtorch has no tensor under this key)"
        );
        assert!(lines[1].contains("name") && lines[1].contains("comer-port") && lines[1].contains("libtorch"), "{text}");
        let marked: Vec<&&str> = lines.iter().filter(|l| l.starts_with("!= ")).collect();
        assert_eq!(marked.len(), 1, "{text}");
        let row = marked[0];
        assert!(row.contains("model.blocks.0.norm1.weight") && row.contains("f32 [48]") && row.contains(" - "), "{row}");
        assert!(lines.iter().any(|l| l.starts_with("   model.cls_token")), "an agreeing key has no marker: {text}");
        assert_eq!(lines.len(), 2 + cross.rows.len());
        let agree = libtorch::cross_read(&ours, &libtorch::read(&fixture("sources/deit/deit_tiny.pth"), Format::TorchZip).expect("read"));
        assert_eq!(agree.render(), "libtorch   agrees: 56 tensors bit for bit (dtype, shape, bytes)\n");
    }

    #[test]
    fn different_values_under_the_same_key_name_the_first_element() {
        // Two models of one shape trained apart: every key matches, the values do not.
        let ours_ck = formats::open(&fixture("sources/deit/deit_tiny.pth")).expect("open");
        let theirs = libtorch::read(&fixture("sources/mae/mae_tiny_pretrain.pth"), Format::TorchZip).expect("read");
        let cross = libtorch::cross_read(&ours_ck.tensors(), &theirs);
        let row = cross.rows.iter().find(|r| r.key == "model.cls_token").expect("row");
        assert_eq!(row.ours, row.libtorch, "same dtype and shape");
        assert_eq!(row.differs.as_deref(), Some("values differ bit for bit (first at flat element 0)"));
    }

    #[test]
    fn no_reader_error_for_containers_libtorch_cannot_read() {
        let st = fixture("sources/hf_vit/vit-tiny-in21k/model.safetensors");
        let e = libtorch::read(&st, Format::Safetensors).err().expect("refused");
        assert!(matches!(e, LibtorchError::NoReader { format: "safetensors", .. }), "{e}");
        assert!(e.to_string().contains("model.safetensors") && e.to_string().contains("no reader"), "{e}");
        let e = libtorch::read(&fixture("sources/augreg/augreg_tiny.npz"), Format::Npz).err().expect("refused");
        assert!(matches!(e, LibtorchError::NoReader { format: "npz", .. }), "{e}");
    }

    #[test]
    fn read_error_carries_libtorchs_message_on_one_line() {
        let dir = tmpdir();
        let junk = dir.join("junk.pth");
        std::fs::write(&junk, b"PK\x03\x04 not really a zip").expect("write");
        for format in [Format::TorchZip, Format::TorchScript] {
            let e = libtorch::read(&junk, format).err().expect("refused");
            let LibtorchError::Read { path, reason } = &e else { panic!("{e}") };
            assert_eq!(path, &junk);
            assert!(!reason.is_empty() && !reason.contains('\n'), "{reason}");
            assert!(!reason.contains("Exception raised from"), "backtrace kept: {reason}");
            assert!(e.to_string().contains("junk.pth: libtorch could not read it"), "{e}");
        }
        // A state dict through the TorchScript route: torch::jit::load refuses it.
        let e = libtorch::read(&fixture("sources/deit/deit_tiny.pth"), Format::TorchScript).err().expect("refused");
        assert!(matches!(e, LibtorchError::Read { .. }), "{e}");
    }

    #[test]
    fn inspect_libtorch_agrees_differs_and_skips() {
        let out = bin().args(["inspect", "--no-sha256", "--libtorch"]).arg(fixture("sources/clip/clip_tiny_quickgelu_visual_jit.pt")).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("libtorch   agrees: 56 tensors bit for bit (dtype, shape, bytes)"), "{text}");

        let out = bin().args(["inspect", "--no-sha256", "--libtorch", "--json"]).arg(fixture("generated/legacy_views.pth")).output().expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["libtorch"]["agrees"], true, "{v}");
        assert_eq!(v["libtorch"]["tensors"], 2);

        let out = bin().args(["inspect", "--no-sha256", "--libtorch"]).arg(fixture("sources/hf_vit/vit-tiny-in21k")).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("libtorch   skipped:") && text.contains("no reader for a hf-folder input"), "{text}");
    }

    /// Import the DeiT fixture with a `.pth`; returns (artifact, pth).
    fn import_with_pth(dir: &Path) -> (PathBuf, PathBuf) {
        let st = dir.join("deit.safetensors");
        let pth = dir.join("deit.pth");
        let out = bin()
            .arg("import")
            .arg(fixture("sources/deit/deit_tiny.pth"))
            .arg("--config")
            .arg(fixture(CASE))
            .arg("-o")
            .arg(&st)
            .arg("--pth")
            .arg(&pth)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (st, pth)
    }

    fn verify_json(st: &Path) -> (Option<i32>, serde_json::Value) {
        let out = bin()
            .arg("verify")
            .arg(st)
            .arg("--source")
            .arg(fixture("sources/deit/deit_tiny.pth"))
            .args(["--libtorch", "--json"])
            .output()
            .expect("run");
        (out.status.code(), serde_json::from_slice(&out.stdout).expect("json"))
    }

    fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        v["checks"].as_array().expect("checks").iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no `{name}` in {v}"))
    }

    #[test]
    fn verify_libtorch_reads_the_source_and_the_written_pth_identically() {
        let dir = tmpdir();
        let (st, _) = import_with_pth(&dir);
        let (code, v) = verify_json(&st);
        assert_eq!(code, Some(0), "{v}");
        let src = check(&v, "libtorch source deit_tiny.pth");
        assert_eq!(src["passed"], true, "{src}");
        assert_eq!(src["note"], "56 tensors bit for bit (dtype, shape, bytes)");
        let pth = check(&v, "libtorch round trip deit.pth vs .safetensors");
        assert_eq!(pth["passed"], true, "{pth}");
        let n = formats::open(&st).expect("open").tensors().len();
        assert_eq!(pth["note"], format!("{n} tensors bit for bit (dtype, shape, bytes)"));
        // The table shows the rows like every other check.
        let out = bin().arg("verify").arg(&st).arg("--source").arg(fixture("sources/deit/deit_tiny.pth")).arg("--libtorch").output().expect("run");
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("libtorch source deit_tiny.pth") && table.contains("libtorch round trip deit.pth"), "{table}");
    }

    /// Copy the zip `src` to `dst` member by member through `edit` (which may change a
    /// member's bytes, or return false to leave it out), stored, CRCs recomputed: a valid archive.
    fn rezip(src: &Path, dst: &Path, mut edit: impl FnMut(&str, &mut Vec<u8>) -> bool) {
        let mut zin = zip::ZipArchive::new(std::fs::File::open(src).expect("open")).expect("zip");
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..zin.len() {
            let mut m = zin.by_index(i).expect("member");
            let name = m.name().expect("member name").into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut m, &mut data).expect("read");
            if edit(&name, &mut data) {
                members.push((name, data));
            }
        }
        let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).expect("create"));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            zout.start_file(name, opts).expect("start");
            std::io::Write::write_all(&mut zout, &data).expect("write");
        }
        zout.finish().expect("finish");
    }

    /// Rewrite the `.pth` at `pth` with one bit of the record holding `key`'s bytes flipped.
    fn alter_record(pth: &Path, key: &str) {
        let want = {
            let ck = formats::open(pth).expect("open");
            let (_, sd) = ck.state_dict();
            sd.iter().find(|(k, _)| k == key).map(|(_, t)| t.to_le_bytes()).expect("key")
        };
        let copy = pth.with_extension("orig");
        std::fs::rename(pth, &copy).expect("move");
        let mut flipped = false;
        rezip(&copy, pth, |_, data| {
            if !flipped && *data == want {
                data[0] ^= 1;
                flipped = true;
            }
            true
        });
        assert!(flipped, "no record holds `{key}`");
    }

    #[test]
    fn a_file_libtorch_cannot_read_fails_the_cross_check() {
        // A TorchScript archive without its code: comer-port reads the attribute tree (it never
        // needs the code), torch::jit::load refuses it.
        let dir = tmpdir();
        let pt = dir.join("no_code.pt");
        rezip(&fixture("sources/clip/clip_tiny_quickgelu_visual_jit.pt"), &pt, |name, _| !name.contains("/code/"));
        let ck = formats::open(&pt).expect("comer-port reads it");
        assert_eq!(ck.format, Format::TorchScript);
        let out = bin().args(["inspect", "--no-sha256", "--libtorch"]).arg(&pt).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("libtorch   DIFFERS:") && text.contains("no_code.pt: libtorch could not read it"), "{text}");
        let out = bin().args(["inspect", "--no-sha256", "--libtorch", "--json"]).arg(&pt).output().expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["libtorch"]["agrees"], false, "{v}");
        assert!(v["libtorch"]["error"].as_str().is_some_and(|e| e.contains("could not read it")), "{v}");
        assert_eq!(out.status.code(), Some(1));
    }

    #[test]
    fn an_altered_pth_is_caught_naming_the_key() {
        let dir = tmpdir();
        let (st, pth) = import_with_pth(&dir);
        alter_record(&pth, "pos_embed");
        let (code, v) = verify_json(&st);
        assert_eq!(code, Some(1), "{v}");
        let row = check(&v, "libtorch round trip deit.pth vs .safetensors");
        assert_eq!(row["passed"], false, "{row}");
        let note = row["note"].as_str().unwrap_or("");
        assert!(note.starts_with("`pos_embed`: values differ bit for bit (first at flat element 0)"), "{note}");
        // The source is untouched: its row still passes.
        assert_eq!(check(&v, "libtorch source deit_tiny.pth")["passed"], true);
    }

    #[test]
    fn verify_libtorch_skips_a_source_libtorch_cannot_read() {
        let dir = tmpdir();
        let st = dir.join("vit.safetensors");
        let src = fixture("sources/hf_vit/vit-tiny-in21k");
        let out = bin().arg("import").arg(&src).arg("--config").arg(fixture(CASE)).arg("-o").arg(&st).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = bin().arg("verify").arg(&st).arg("--source").arg(&src).args(["--libtorch", "--json"]).output().expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let row = check(&v, "libtorch source vit-tiny-in21k");
        assert!(row["skipped"].as_str().is_some_and(|s| s.contains("no reader for a hf-folder input")), "{row}");
        // No .pth beside the artifact: no round-trip row.
        assert!(!v["checks"].as_array().expect("checks").iter().any(|c| c["name"].as_str().is_some_and(|n| n.contains("libtorch round trip"))));
    }
}
