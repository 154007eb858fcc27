//! The newcomer's path (issue 15): `import X` with no target flags picks the preset; hub
//! wrapper layouts (Hugging Face `ViTForImageClassification`, timm's DINOv2 with and without
//! registers) import like the bare layouts they wrap; conflicting flags, unknown families and
//! re-imported artifacts get usage errors or messages that say what happened; outputs are
//! named after the artifact; `run`/`export` warn about an unverified artifact.

use crate::util::{bin, fixture, tmpdir};
use comer_port::export::safetensors::OutTensor;
use comer_port::formats::testkit::{timm_block, timm_block_attn};
use comer_port::formats::{self, DType};
use comer_port::model::presets::preset;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn det_tiny() -> PathBuf {
    fixture("forward/det_tiny/case.json")
}

/// `comer-port import SRC ARGS…`.
fn import(src: &Path, args: &[&str]) -> Output {
    bin().arg("import").arg(src).args(args).output().expect("runs")
}

/// Import `sources/SRC` into det_tiny at `out` (asserted to succeed).
fn import_ok(src: &str, out: &Path, extra: &[&str]) -> Output {
    let cfg = det_tiny();
    let mut args = vec!["--config", cfg.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--force"];
    args.extend_from_slice(extra);
    let o = import(&fixture(&format!("sources/{src}")), &args);
    assert!(o.status.success(), "import {src}: {}\n{}", text(&o.stdout), text(&o.stderr));
    o
}

/// Every tensor of a safetensors file: name → (shape, little-endian bytes).
fn tensors(p: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let ck = formats::open(p).expect("readable");
    ck.tensors().into_iter().map(|(k, t)| (k, (t.shape.clone(), t.to_le_bytes()))).collect()
}

/// A DeiT-tiny-shaped `{"model": state_dict}` at real size (embed 192, depth 12, a 14x14
/// grid: vit-comer-t-seg's dimensions), written with the crate's own `.pth` writer. The
/// values are arbitrary: only the layout matters to the choice of preset.
fn deit_tiny_real_size(dir: &Path) -> PathBuf {
    let (d, depth) = (192usize, 12usize);
    let mut t = vec![
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, 197, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, 16, 16]),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    for i in 0..depth {
        t.extend(timm_block(i, d));
    }
    t.push(("norm.weight".into(), vec![d]));
    t.push(("norm.bias".into(), vec![d]));
    let outs: Vec<OutTensor> = t.into_iter().map(|(name, shape)| OutTensor { name, shape, dtype: DType::F32 }).collect();
    let path = dir.join("deit_tiny_patch16_224.pth");
    comer_port::export::pth::write_with_root(&path, false, "model", &outs, &[], |i| {
        let n: usize = outs[i].shape.iter().product();
        let v: Vec<u8> = (0..n).flat_map(|j| (0.01 * ((j % 7) as f32 - 3.0)).to_le_bytes()).collect();
        Ok::<_, comer_port::export::atomic::WriteError>(v)
    })
    .expect("write the source");
    path
}

// ---- 1. the target chosen for the user ----

/// `import X` with no --preset/--config/--flavor: the seg preset of the source's size, said
/// in one line on stdout and in the report; every file written is listed.
#[test]
fn import_without_target_picks_the_preset_that_fits() {
    let d = tmpdir();
    let src = deit_tiny_real_size(&d);
    let out = d.join("t.safetensors");
    let report = d.join("t.report.json");
    let o = import(&src, &["-o", out.to_str().expect("utf-8"), "--report", report.to_str().expect("utf-8"), "--no-verify"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    let chose: Vec<&str> = stdout.lines().filter(|l| l.contains("chose preset")).collect();
    assert_eq!(chose.len(), 1, "one line says which preset: {stdout}");
    assert!(chose[0].contains("chose preset vit-comer-t-seg") && chose[0].contains("embed 192, depth 12"), "{stdout}");
    let ck = formats::open(&out).expect("artifact");
    let recorded: serde_json::Value = serde_json::from_str(&ck.metadata["comer_port.config"]).expect("config");
    assert_eq!(recorded, preset("vit-comer-t-seg").expect("preset").to_case_json());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let warnings = r["warnings"].as_array().expect("warnings");
    assert!(warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains("chose preset vit-comer-t-seg"))), "{warnings:?}");
    let txt = std::fs::read_to_string(d.join("t.report.txt")).expect("txt");
    assert!(txt.contains("chose preset vit-comer-t-seg"), "the human report says it too");
    // The "wrote" lines: the artifact, its config (named after it), the report and its summary.
    let wrote: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("wrote ")).collect();
    let want: Vec<PathBuf> = vec![out.clone(), d.join("t.config.json"), report.clone(), d.join("t.report.txt")];
    assert_eq!(wrote, want.iter().map(|p| p.to_str().expect("utf-8")).collect::<Vec<_>>(), "{stdout}");
    for p in &want {
        assert!(p.is_file(), "{} written", p.display());
    }
}

/// No preset fits (a tiny model): a usage error that lists the candidates with their
/// dimensions and the flags that choose; nothing is written.
#[test]
fn import_without_target_and_no_fitting_preset_lists_candidates() {
    let d = tmpdir();
    let out = d.join("x.safetensors");
    for (src, flavor, names) in [
        ("deit/deit_tiny.pth", "vit-comer-seg", &["vit-comer-t-seg", "vit-comer-s-seg", "vit-comer-b-seg"][..]),
        ("dinov2/dinov2_tiny_vits14.pth", "vit-comer-det", &["vit-comer-s-det-dinov2", "vit-comer-b-det-dinov2"][..]),
        ("beitv2/beitv2_tiny_ft.pth", "beit-comer", &["beit-comer-l-codetr"][..]),
    ] {
        let o = import(&fixture(&format!("sources/{src}")), &["-o", out.to_str().expect("utf-8")]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{src}: {err}");
        assert!(err.contains("no preset fits") && err.contains("embed 48, depth 4"), "{src}: {err}");
        for n in names {
            assert!(err.contains(&format!("{n} (embed ")), "{src}: lists {n} with its dimensions: {err}");
        }
        assert!(err.contains(&format!("--flavor {flavor}")), "{src}: {err}");
        assert!(!out.exists());
    }
    assert_eq!(std::fs::read_dir(&d).expect("dir").count(), 0, "nothing written");
}

// ---- 2. hub wrapper layouts ----

/// A Hugging Face `ViTForImageClassification` folder: detected as hf-vit (the wrapper named),
/// the classifier dropped as heads are, and the same artifact as the bare `ViTModel` folder
/// of the same weights; it verifies against the folder's goldens.
#[test]
fn hf_vit_for_image_classification_imports_like_the_vit_model() {
    let ck = formats::open(&fixture("sources/hf_vit/vit-tiny-cls")).expect("folder");
    let det = comer_port::families::detect::detect_checkpoint(&ck);
    assert_eq!(det.family, "hf-vit", "{}", det.reason);
    assert!(det.reason.contains("ViTForImageClassification"), "{}", det.reason);
    let c = det.config.expect("config");
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.pretrain_grid), (48, 4, 3, Some((4, 4))));

    let d = tmpdir();
    let (cls, bare) = (d.join("cls.safetensors"), d.join("bare.safetensors"));
    let report = d.join("cls.report.json");
    import_ok("hf_vit/vit-tiny-cls", &cls, &["--report", report.to_str().expect("utf-8")]);
    import_ok("hf_vit/vit-tiny-in21k", &bare, &[]);
    assert_eq!(tensors(&cls), tensors(&bare), "same weights, same artifact");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let fate = |k: &str| {
        r["plan"]["sources"].as_array().expect("sources").iter().find(|f| f["key"] == k).cloned().unwrap_or_default()
    };
    assert_eq!(fate("classifier.weight")["fate"], "dropped", "{r}");
    assert_eq!(fate("embeddings.position_embeddings")["fate"], "used", "the vit. prefix is stripped");
    let o = bin()
        .arg("verify")
        .arg(&cls)
        .arg("--source")
        .arg(fixture("sources/hf_vit/vit-tiny-cls"))
        .arg("--golden")
        .arg(fixture("sources/hf_vit"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o.stdout), text(&o.stderr));
}

/// timm's DINOv2 hub layout without registers (no mask token): detected as dinov2, and the
/// same artifact as the facebookresearch state dict it was converted from.
#[test]
fn timm_dinov2_hub_layout_imports_like_the_bare_state_dict() {
    let ck = formats::open(&fixture("sources/dinov2/timm-dinov2-tiny")).expect("folder");
    let det = comer_port::families::detect::detect_checkpoint(&ck);
    assert_eq!(det.family, "dinov2", "{}", det.reason);
    let c = det.config.expect("config");
    assert_eq!((c.embed_dim, c.depth, c.patch_size, c.num_registers, c.pretrain_grid), (48, 4, 14, 0, Some((4, 4))));
    let d = tmpdir();
    let (timm, bare) = (d.join("timm.safetensors"), d.join("bare.safetensors"));
    import_ok("dinov2/timm-dinov2-tiny", &timm, &[]);
    import_ok("dinov2/dinov2_tiny_vits14.pth", &bare, &[]);
    assert_eq!(tensors(&timm), tensors(&bare));
}

/// timm's DINOv2 hub layout with registers (`reg_token`, a position table of the grid
/// alone): detected as dinov2 with its 4 registers read; refused without --lossy; with it,
/// the artifact of the bare state dict except for the unused cls row of `pos_embed` (folded
/// into timm's cls token, so zero here).
#[test]
fn timm_dinov2_with_registers_is_detected_and_imports_with_lossy() {
    let src = fixture("sources/dinov2/timm-dinov2-tiny-reg4");
    let det = comer_port::families::detect::detect_checkpoint(&formats::open(&src).expect("folder"));
    assert_eq!(det.family, "dinov2", "{}", det.reason);
    assert!(det.reason.contains("reg_token"), "{}", det.reason);
    let c = det.config.expect("config");
    assert_eq!((c.num_registers, c.prefix_tokens, c.pretrain_grid), (4, 5, Some((4, 4))));

    let d = tmpdir();
    let (timm, bare) = (d.join("timm.safetensors"), d.join("bare.safetensors"));
    let cfg = det_tiny();
    let o = import(&src, &["--config", cfg.to_str().expect("utf-8"), "-o", timm.to_str().expect("utf-8")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("'reg_token'") && err.contains("--lossy"), "{err}");
    assert!(!timm.exists());

    let o = import_ok("dinov2/timm-dinov2-tiny-reg4", &timm, &["--lossy"]);
    assert!(text(&o.stdout).contains("dropped 'reg_token' (--lossy)"), "{}", text(&o.stdout));
    import_ok("dinov2/dinov2_tiny_vits14_reg4.pth", &bare, &["--lossy"]);
    let (a, b) = (tensors(&timm), tensors(&bare));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, (shape, bytes)) in &a {
        if k == "pos_embed" {
            let row = 48 * 4;
            assert_eq!(shape, &vec![1, 17, 48]);
            assert!(bytes[..row].iter().all(|&x| x == 0), "zero cls row");
            assert_eq!(bytes[row..], b[k].1[row..], "the grid rows are the source's");
        } else {
            assert_eq!((shape, bytes), (&b[k].0, &b[k].1), "{k}");
        }
    }
}

// ---- 3. flags and messages ----

/// Conflicting or missing arguments are usage errors (exit 2) in every subcommand, before
/// any file is opened.
#[test]
fn usage_errors_exit_2() {
    let d = tmpdir();
    let src = fixture("sources/deit/deit_tiny.pth");
    let (s, cfg) = (src.to_str().expect("utf-8"), det_tiny());
    let c = cfg.to_str().expect("utf-8");
    let w = fixture("forward/det_tiny/weights.safetensors");
    let w = w.to_str().expect("utf-8");
    let input = fixture("forward/det_tiny/inputs.safetensors");
    let input = input.to_str().expect("utf-8");
    let out = d.join("o.safetensors");
    let o_ = out.to_str().expect("utf-8");
    let cases: &[&[&str]] = &[
        &["import"],
        &["import", s, "--preset", "vit-comer-t-seg", "--flavor", "vit-comer-det", "-o", o_],
        &["import", s, "--config", c, "--flavor", "vit-comer-det", "-o", o_],
        &["import", s, "--config", c, "--preset", "vit-comer-t-seg", "-o", o_],
        &["verify", w, "--config", c, "--preset", "vit-comer-t-seg"],
        &["run", "--weights", w, "--config", c, "--input", input],
        &["export", "onnx", w, "--config", c, "-o", "/nonexistent/x.onnx", "--input-size", "64x80"],
    ];
    for args in cases {
        let o = bin().args(*args).output().expect("runs");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
    assert!(!out.exists(), "nothing written");
}

/// `--family xyz`: the parser names the known families (and does not ask for the flag it was
/// given); a known family the keys do not fit names the family and how to detect instead.
#[test]
fn family_flag_messages() {
    let d = tmpdir();
    let src = fixture("sources/deit/deit_tiny.pth");
    let out = d.join("x.safetensors");
    let cfg = det_tiny();
    let args = |fam: &'static str| vec!["--family", fam, "--config", cfg.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8")];
    let o = import(&src, &args("xyz"));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for f in comer_port::families::names() {
        assert!(err.contains(f), "lists {f}: {err}");
    }
    assert!(!err.contains("pass --family"), "{err}");
    let o = import(&src, &args("hf-vit"));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("not a hf-vit checkpoint") && !err.contains("pass --family"), "{err}");
    assert!(!out.exists());
}

/// Re-importing an artifact (upstream's own weights, or comer-port's) says that it already is
/// one, instead of blaming a family's rules.
#[test]
fn reimporting_an_artifact_says_it_already_is_one() {
    let d = tmpdir();
    let art = d.join("a.safetensors");
    import_ok("deit/deit_tiny.pth", &art, &["--no-verify"]);
    let cfg = det_tiny();
    for (src, why) in [(fixture("forward/det_tiny/weights.safetensors"), "level_embed"), (art, "comer_port.config")] {
        let o = import(&src, &["--config", cfg.to_str().expect("utf-8"), "-o", d.join("again.safetensors").to_str().expect("utf-8")]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains("already a ViT-CoMer artifact") && err.contains(why), "{err}");
        assert!(!err.contains("used by no rule"), "{err}");
    }
    assert!(!d.join("again.safetensors").exists());
}

/// Every subcommand's --help (and the top level's) has an Examples section.
#[test]
fn every_help_has_examples() {
    let cases: &[&[&str]] = &[
        &[],
        &["demo"],
        &["inspect"],
        &["import"],
        &["verify"],
        &["run"],
        &["bench"],
        &["presets"],
        &["export"],
        &["export", "onnx"],
    ];
    for args in cases {
        let o = bin().args(*args).arg("--help").output().expect("runs");
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(out.contains("Examples:\n  comer-port"), "{args:?}: {out}");
    }
}

// ---- 4. outputs named after the artifact ----

/// Two imports into one folder do not collide: each config is named after its artifact.
#[test]
fn two_imports_in_one_folder_keep_their_own_configs() {
    let d = tmpdir();
    let cfg = det_tiny();
    let seg = fixture("forward/seg_tiny/case.json");
    for (name, c) in [("a", &cfg), ("b", &seg)] {
        let out = d.join(format!("{name}.safetensors"));
        let pth = d.join(format!("{name}.pth"));
        let o = import(
            &fixture("sources/deit/deit_tiny.pth"),
            &["--config", c.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--pth", pth.to_str().expect("utf-8"), "--no-verify"],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let stdout = text(&o.stdout);
        for f in [out, pth, d.join(format!("{name}.config.json"))] {
            assert!(stdout.contains(&format!("wrote {}\n", f.display())), "{stdout}");
            assert!(f.is_file());
        }
    }
    let flavor = |n: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(format!("{n}.config.json"))).expect("config")).expect("json");
        v["flavor"].as_str().map(str::to_string)
    };
    assert_eq!(flavor("a").as_deref(), Some("vit-comer-det"));
    assert_eq!(flavor("b").as_deref(), Some("vit-comer-seg"));
    assert!(!d.join("config.json").exists());
}

// ---- 5. run / export warn about an unverified artifact ----

/// A source with one NaN weight: its import fails verification and records it.
fn nan_source(d: &Path) -> PathBuf {
    let src = formats::open(&fixture("sources/deit/deit_tiny.pth")).expect("fixture");
    let (_, sd) = src.state_dict();
    let outs: Vec<OutTensor> = sd.iter().map(|(k, t)| OutTensor { name: k.clone(), shape: t.shape.clone(), dtype: t.dtype }).collect();
    let bad = d.join("nan.pth");
    comer_port::export::pth::write_with_root(&bad, false, "model", &outs, &[], |i| {
        let mut b = sd[i].1.to_le_bytes();
        if sd[i].0 == "blocks.1.mlp.fc1.weight" {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Ok::<_, comer_port::export::atomic::WriteError>(b)
    })
    .expect("write");
    bad
}

#[test]
fn run_and_export_warn_unless_the_recorded_verdict_passed() {
    let d = tmpdir();
    let cfg = det_tiny();
    let (passed, unverified, failed) = (d.join("p.safetensors"), d.join("u.safetensors"), d.join("f.safetensors"));
    import_ok("deit/deit_tiny.pth", &passed, &[]);
    import_ok("deit/deit_tiny.pth", &unverified, &["--no-verify"]);
    let o = import(&nan_source(&d), &["--config", cfg.to_str().expect("utf-8"), "-o", failed.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let foreign = fixture("forward/det_tiny/weights.safetensors");
    let input = fixture("forward/det_tiny/inputs.safetensors");
    let run = |w: &Path, extra: &[&str]| {
        bin()
            .args(["run", "--weights"])
            .arg(w)
            .arg("--input")
            .arg(&input)
            .arg("-o")
            .arg(d.join("out.safetensors"))
            .arg("--force")
            .args(extra)
            .output()
            .expect("runs")
    };
    let c = cfg.to_str().expect("utf-8");
    for (w, extra, want) in [
        (&passed, &[][..], None),
        (&unverified, &[][..], Some("not verified at import (--no-verify)")),
        (&failed, &[][..], Some("FAILED")),
        (&foreign, &["--config", c][..], Some("records no verification verdict")),
    ] {
        let o = run(w, extra);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{}: {err}", w.display());
        match want {
            None => assert!(!err.contains("warning"), "{}: {err}", w.display()),
            Some(s) => assert!(err.contains("warning") && err.contains(s), "{}: {err}", w.display()),
        }
    }
    for (w, warn) in [(&passed, false), (&unverified, true)] {
        let o = bin()
            .args(["export", "onnx"])
            .arg(w)
            .arg("-o")
            .arg(d.join("x.onnx"))
            .args(["--input-size", "64x64", "--force"])
            .output()
            .expect("runs");
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert_eq!(err.contains("warning"), warn, "{}: {err}", w.display());
    }
}

// ---- the .pth for mmdet's load_from ----

/// `--key-prefix backbone.`: the `.pth` holds the artifact's tensors under `backbone.`, the
/// safetensors artifact keeps upstream's names (and verifies); the prefix needs a `.pth` and
/// one not named like the artifact (verify reads that one back key for key).
#[test]
fn key_prefix_names_the_pth_for_load_from() {
    let d = tmpdir();
    let (out, pth) = (d.join("c.safetensors"), d.join("c.backbone.pth"));
    let o = import_ok("deit/deit_tiny.pth", &out, &["--pth", pth.to_str().expect("utf-8"), "--key-prefix", "backbone."]);
    assert!(text(&o.stdout).contains(&format!("wrote {}\n", pth.display())));
    let st = tensors(&out);
    let p = formats::open(&pth).expect("pth");
    let (wrapper, sd) = p.state_dict();
    assert_eq!(wrapper, "state_dict");
    assert_eq!(sd.len(), st.len());
    for (k, t) in sd {
        let name = k.strip_prefix("backbone.").unwrap_or_else(|| panic!("{k} lacks the prefix"));
        assert_eq!((&t.shape, &t.to_le_bytes()), (&st[name].0, &st[name].1), "{k}");
    }
    assert!(!st.keys().any(|k| k.starts_with("backbone.")), "the safetensors keeps upstream's names");
    let o = bin().arg("verify").arg(&out).arg("--source").arg(fixture("sources/deit/deit_tiny.pth")).output().expect("runs");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));

    let cfg = det_tiny();
    let src = fixture("sources/deit/deit_tiny.pth");
    let same = d.join("c.pth");
    for extra in [
        vec!["--key-prefix", "backbone."],
        vec!["--pth", same.to_str().expect("utf-8"), "--key-prefix", "backbone."],
    ] {
        let mut args = vec!["--config", cfg.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--force"];
        args.extend(extra);
        let o = import(&src, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
    assert!(!same.exists());
}

// ---- 6. progress on stderr, stdout parseable ----

/// Run `comer-port ARGS…` (stderr piped, as in CI).
fn cli(args: &[&str]) -> Output {
    bin().args(args).output().expect("runs")
}

/// The progress lines of a piped stderr (`comer-port: STAGE…`).
fn progress_lines(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.starts_with("comer-port: ")).collect()
}

/// Piped stderr: one plain line per stage (read, write, each verification check) on import,
/// verify, run and export; nothing of it on stdout; `--quiet` silences it and nothing else;
/// `verify --json` stays one JSON object either way.
#[test]
fn progress_is_one_line_per_stage_when_piped_and_quiet_silences_it() {
    let d = tmpdir();
    let (out, cfg) = (d.join("p.safetensors"), det_tiny());
    let (o_, c) = (out.to_str().expect("utf-8"), cfg.to_str().expect("utf-8"));
    let src = fixture("sources/deit/deit_tiny.pth");
    let s = src.to_str().expect("utf-8");
    let o = cli(&["import", s, "--config", c, "-o", o_]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let lines = progress_lines(&err);
    for stage in [
        format!("comer-port: read {s}: torch-zip, "),
        format!("comer-port: write {o_}: "),
        "comer-port: verify: round trip: ".to_string(),
        "comer-port: verify: key set: 1 ok".to_string(),
        "comer-port: verify: mapping parity: 2 ok".to_string(),
        "comer-port: verify: backbone: 4 ok".to_string(),
    ] {
        assert_eq!(lines.iter().filter(|l| l.starts_with(&stage)).count(), 1, "{stage}: {err}");
    }
    assert!(!text(&o.stdout).contains("comer-port: "), "progress stays off stdout");
    let quiet = cli(&["import", s, "--config", c, "-o", o_, "--force", "--quiet"]);
    assert!(quiet.status.success());
    assert_eq!(text(&quiet.stderr), "", "--quiet: no progress, and this import has nothing else to say");
    assert_eq!(text(&quiet.stdout).lines().count(), text(&o.stdout).lines().count(), "stdout unchanged by --quiet");

    let input = fixture("forward/det_tiny/inputs.safetensors");
    let onnx = d.join("p.onnx");
    let ran = d.join("r.safetensors");
    let runs: [(Vec<&str>, &[&str]); 3] = [
        (vec!["verify", o_, "--source", s], &["comer-port: verify: round trip", "comer-port: verify: backbone"]),
        (
            vec!["run", "--weights", o_, "--input", input.to_str().expect("utf-8"), "-o", ran.to_str().expect("utf-8")],
            &["comer-port: read ", "comer-port: forward: 2 input tensors", "comer-port: write "],
        ),
        (
            vec!["export", "onnx", o_, "-o", onnx.to_str().expect("utf-8"), "--input-size", "64x64"],
            &["comer-port: read ", "comer-port: export "],
        ),
    ];
    for (args, stages) in runs {
        let o = cli(&args);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        for stage in stages {
            assert!(progress_lines(&err).iter().any(|l| l.starts_with(stage)), "{args:?}: {stage}: {err}");
        }
        assert!(!text(&o.stdout).contains("comer-port: "), "{args:?}");
        let mut q = args.clone();
        q.push("--quiet");
        if args[0] != "verify" {
            q.push("--force");
        }
        let o = cli(&q);
        assert!(o.status.success(), "{q:?}: {}", text(&o.stderr));
        assert!(progress_lines(&text(&o.stderr)).is_empty(), "{q:?}: {}", text(&o.stderr));
    }
    for quiet in [false, true] {
        let mut args = vec!["verify", o_, "--source", s, "--json"];
        if quiet {
            args.push("--quiet");
        }
        let o = cli(&args);
        let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).expect("stdout is one JSON object");
        assert_eq!(v["passed"], true, "{v}");
    }
}

// ---- 7. the report opens with a summary ----

/// The first lines of `import`'s output and of `R.txt`, and the first field of `R.json`:
/// source, family and why, target and why, verdict, every file written, times.
#[test]
fn the_report_opens_with_a_summary() {
    let d = tmpdir();
    let (out, report) = (d.join("s.safetensors"), d.join("s.report.json"));
    let o = import_ok("deit/deit_tiny.pth", &out, &["--report", report.to_str().expect("utf-8")]);
    let stdout = text(&o.stdout);
    let first: Vec<&str> = stdout.lines().take(9).collect();
    let src = fixture("sources/deit/deit_tiny.pth");
    assert_eq!(first[0], format!("source   {} (torch-zip)", src.display()), "{stdout}");
    assert!(first[1].starts_with("family   deit: timm ViT names under the 'model' wrapper"), "{stdout}");
    assert!(first[2].starts_with(&format!("target   config {} (vit-comer-det): --config given", det_tiny().display())), "{stdout}");
    assert!(first[3].starts_with("verdict  passed ("), "{stdout}");
    let wrote: Vec<String> =
        [&out, &d.join("s.config.json"), &report, &d.join("s.report.txt")].iter().map(|p| format!("wrote {}", p.display())).collect();
    assert_eq!(first[4..8], wrote.iter().map(String::as_str).collect::<Vec<_>>()[..], "{stdout}");
    assert!(first[8].starts_with("times    read ") && first[8].contains("; total "), "{stdout}");

    let raw = std::fs::read_to_string(&report).expect("report");
    assert!(raw.starts_with("{\n  \"summary\": {\n    \"source\": "), "the summary is the first field: {}", &raw[..80]);
    let r: serde_json::Value = serde_json::from_str(&raw).expect("json");
    let s = &r["summary"];
    assert_eq!(s["family"], "deit");
    assert_eq!(s["flavor"], "vit-comer-det");
    assert_eq!(s["format"], "torch-zip");
    assert!(s["verdict"].as_str().is_some_and(|v| v.starts_with("passed")), "{s}");
    let outputs: Vec<String> = [&out, &d.join("s.config.json"), &report, &d.join("s.report.txt")].iter().map(|p| p.display().to_string()).collect();
    assert_eq!(s["outputs"], serde_json::json!(outputs));
    for k in ["read_s", "plan_s", "write_s", "verify_s", "commit_s", "total_s"] {
        assert!(s["times"][k].as_f64().is_some_and(|t| t >= 0.0), "{k}: {s}");
    }
    let txt = std::fs::read_to_string(d.join("s.report.txt")).expect("txt");
    assert!(txt.starts_with(&first[..4].iter().map(|l| format!("{l}\n")).collect::<String>()), "{txt}");

    // Without verification the verdict says why it did not run.
    let o = import_ok("deit/deit_tiny.pth", &out, &["--no-verify"]);
    assert!(text(&o.stdout).lines().nth(3).is_some_and(|l| l == "verdict  not run (--no-verify)"), "{}", text(&o.stdout));
}

// ---- 8. messages that name the file, the key and the fix ----

/// `run`/`verify`/`export` given a source checkpoint (or a Hugging Face folder) say what it
/// is and to import it first, instead of a reader's complaint.
#[test]
fn a_source_given_as_an_artifact_says_import_it_first() {
    let d = tmpdir();
    let cfg = det_tiny();
    let c = cfg.to_str().expect("utf-8");
    let input = fixture("forward/det_tiny/inputs.safetensors");
    let i = input.to_str().expect("utf-8");
    let out = d.join("o.safetensors");
    let onnx = d.join("o.onnx");
    for (src, what) in [("sources/deit/deit_tiny.pth", "(deit, torch-zip)"), ("sources/hf_vit/vit-tiny-cls", "(hf-vit, hf-folder)")] {
        let p = fixture(src);
        let s = p.to_str().expect("utf-8");
        for args in [
            vec!["verify", s],
            vec!["verify", s, "--config", c],
            vec!["run", "--weights", s, "--input", i, "-o", out.to_str().expect("utf-8")],
            vec!["run", "--weights", s, "--config", c, "--input", i, "-o", out.to_str().expect("utf-8")],
            vec!["export", "onnx", s, "--config", c, "-o", onnx.to_str().expect("utf-8"), "--input-size", "64x64"],
        ] {
            let o = cli(&args);
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
            assert!(err.contains(&format!("{s} is a source checkpoint {what}")), "{args:?}: {err}");
            assert!(err.contains(&format!("comer-port import {s} -o ARTIFACT.safetensors")), "{args:?}: {err}");
            assert!(!err.contains("header too large"), "{args:?}: {err}");
        }
    }
    assert!(!out.exists() && !onnx.exists());
}

/// `inspect` on a missing file names the OS error once; on a folder without a checkpoint it
/// says what it looked for and what to give instead.
#[test]
fn inspect_names_an_os_error_once() {
    let d = tmpdir();
    let missing = d.join("missing.pth");
    let o = cli(&["inspect", missing.to_str().expect("utf-8")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let o = cli(&["inspect", d.to_str().expect("utf-8")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("model.safetensors") && err.contains("give the checkpoint file itself"), "{err}");
}

/// A timm-named state dict with the MLP under `mlp_keys` (name → shape, for block 0 of an
/// embed-16 model), written with the crate's `.pth` writer under `state_dict`, or bare when
/// `name` ends in `.safetensors`; `extra` adds more keys.
fn timm_like(dir: &Path, name: &str, patch: usize, mlp_keys: &[(&str, Vec<usize>)], extra: &[(&str, Vec<usize>)]) -> PathBuf {
    let d = 16usize;
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, 5, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, patch, patch]),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    t.extend(timm_block_attn(0, d));
    t.extend(mlp_keys.iter().map(|(n, s)| (format!("blocks.0.mlp.{n}"), s.clone())));
    t.extend(extra.iter().map(|(n, s)| (n.to_string(), s.clone())));
    let path = dir.join(name);
    if name.ends_with(".safetensors") {
        // A bare state dict, as timm's hub checkpoints are.
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            t.into_iter().map(|(k, s)| { let n: usize = s.iter().product(); (k, s, vec![0u8; 4 * n]) }).collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(k, s, b)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view")))
            .collect();
        std::fs::write(&path, safetensors::serialize(views, None).expect("serialize")).expect("write");
        return path;
    }
    let outs: Vec<OutTensor> = t.into_iter().map(|(name, shape)| OutTensor { name, shape, dtype: DType::F32 }).collect();
    comer_port::export::pth::write_with_root(&path, false, "state_dict", &outs, &[], |i| {
        let n: usize = outs[i].shape.iter().product();
        Ok::<_, comer_port::export::atomic::WriteError>(vec![0u8; 4 * n])
    })
    .expect("write");
    path
}

/// SwiGLU MLPs (timm's `SwiGLU`, timm's packed DINOv2 ViT-g layout, facebookresearch's
/// DINOv2 ViT-g `w12`/`w3`) are refused naming the key and why (upstream's Mlp is fc1 ->
/// GELU -> fc2); timm's plain ViT-g/14 (patch 14, no DINOv2 markers) is a timm ViT.
#[test]
fn swiglu_vits_are_refused_and_timm_vit_g_is_timm_vit() {
    let d = tmpdir();
    let ls = [("blocks.0.ls1.gamma", vec![16]), ("blocks.0.ls2.gamma", vec![16])];
    let cases = [
        (
            timm_like(&d, "swiglu.pth", 16, &[("fc1_g.weight", vec![64, 16]), ("fc1_x.weight", vec![64, 16]), ("fc2.weight", vec![16, 64])], &[]),
            "blocks.0.mlp.fc1_g.weight",
            "timm SwiGLU",
        ),
        (
            timm_like(&d, "dinov2_g_timm.pth", 14, &[("fc1.weight", vec![128, 16]), ("fc2.weight", vec![16, 64])], &ls),
            "blocks.0.mlp.fc1.weight",
            "SwiGLUPacked",
        ),
        (
            timm_like(
                &d,
                "dinov2_vitg14.pth",
                14,
                &[("w12.weight", vec![128, 16]), ("w12.bias", vec![128]), ("w3.weight", vec![16, 64]), ("w3.bias", vec![16])],
                &[("mask_token", vec![1, 16]), ls[0].clone(), ls[1].clone()],
            ),
            "blocks.0.mlp.w12.weight",
            "SwiGLUFFNFused",
        ),
    ];
    let cfg = det_tiny();
    for (src, key, what) in &cases {
        let o = import(src, &["--config", cfg.to_str().expect("utf-8"), "-o", d.join("x.safetensors").to_str().expect("utf-8")]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains(&format!("'{key}' is a gated SwiGLU MLP")) && err.contains(what), "{err}");
        assert!(err.contains("plain Mlp (fc1 -> GELU -> fc2)") && !err.contains("pass --family"), "{err}");
        let det = comer_port::families::detect::detect_checkpoint(&formats::open(src).expect("open"));
        assert_eq!(det.family, "unknown");
        assert!(det.reason.contains("SwiGLU"), "{}", det.reason);
    }
    assert!(!d.join("x.safetensors").exists());
    // timm vit_giant_patch14_224: plain Mlp (mlp ratio 48/11), patch 14, no mask token, no layer scale.
    let g = timm_like(&d, "vit_giant_patch14_224.safetensors", 14, &[("fc1.weight", vec![69, 16]), ("fc2.weight", vec![16, 69])], &[]);
    let det = comer_port::families::detect::detect_checkpoint(&formats::open(&g).expect("open"));
    assert_eq!(det.family, "timm-vit", "{}", det.reason);
    assert_eq!(det.config.map(|c| (c.patch_size, c.mlp_hidden)), Some((14, 69)));
}

// ---- 9. full-model pickles ----

/// `torch.save(model)` of a timm ViT reads as `model.state_dict()`: inspect names it, and it
/// imports into the artifact its state dict gives, tensor for tensor.
#[test]
fn a_full_model_pickle_imports_like_its_state_dict() {
    let src = fixture("sources/deit/deit_tiny_full_model.pth");
    let o = cli(&["inspect", src.to_str().expect("utf-8")]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("wrapper    (none: full-model pickle: timm VisionTransformer, read as its state dict)"), "{out}");
    assert!(out.contains("family     timm-vit"), "{out}");
    let ck = formats::open(&src).expect("full model");
    let want = formats::open(&fixture("sources/deit/deit_tiny_fp16.pth")).expect("state dict");
    let names = |c: &formats::Checkpoint| c.state_dict().1.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(names(&ck), names(&want), "the state dict's keys, in its order");
    assert_eq!(ck.full_model().as_deref(), Some("full-model pickle: timm VisionTransformer, read as its state dict"));

    let d = tmpdir();
    let (full, sd) = (d.join("full.safetensors"), d.join("sd.safetensors"));
    let o = import_ok("deit/deit_tiny_full_model.pth", &full, &[]);
    assert!(text(&o.stdout).starts_with(&format!(
        "source   {} (torch-zip (full-model pickle: timm VisionTransformer, read as its state dict))",
        src.display()
    )));
    import_ok("deit/deit_tiny_fp16.pth", &sd, &[]);
    assert_eq!(tensors(&full), tensors(&sd), "same weights, same artifact");
}

/// timm's BEiT registers `relative_position_index` with persistent=False: read from the
/// full model, the state dict leaves it out exactly as torch's own `state_dict()` did.
#[test]
fn a_full_model_pickle_honours_non_persistent_buffers() {
    let full = formats::open(&fixture("sources/beitv2/beit_tiny_full_model.pth")).expect("full model");
    let want = formats::open(&fixture("sources/beitv2/beit_tiny_full_model.state_dict.pth")).expect("state dict");
    let (got, exp) = (full.state_dict().1, want.state_dict().1);
    assert_eq!(got.iter().map(|(k, _)| k).collect::<Vec<_>>(), exp.iter().map(|(k, _)| k).collect::<Vec<_>>());
    for ((k, a), (_, b)) in got.iter().zip(&exp) {
        assert_eq!((&a.shape, a.to_le_bytes()), (&b.shape, b.to_le_bytes()), "{k}");
    }
    assert!(!got.iter().any(|(k, _)| k.contains("relative_position_index")));
    assert_eq!(full.full_model().as_deref(), Some("full-model pickle: timm Beit, read as its state dict"));
}

/// A full-model pickle is read, never run: a module whose state calls `os.system`, or a timm
/// function (not a class) called by REDUCE, is refused naming the global; nothing is written.
#[test]
fn a_malicious_full_model_pickle_is_refused() {
    use comer_port::formats::testkit::{Pickle, torch_zip};
    let module = |inner: Pickle| {
        inner
            .global("timm.models.vision_transformer", "VisionTransformer")
            .empty_tuple()
            .op(0x81) // NEWOBJ: an inert object, no constructor runs
            .empty_dict()
            .str("_parameters")
    };
    let evil = module(Pickle::new()).global("os", "system").mark().str("touch /tmp/pwned").tuple().reduce().setitem().op(b'b').stop();
    let func = module(Pickle::new()).global("timm.models", "create_model").mark().str("vit").tuple().reduce().setitem().op(b'b').stop();
    let d = tmpdir();
    for (name, pkl, global) in [("evil_model.pth", evil, "os.system"), ("func_model.pth", func, "timm.models.create_model")] {
        let p = d.join(name);
        std::fs::write(&p, torch_zip("evil", &pkl.0, "little", &[])).expect("write");
        let err = formats::open(&p).map(|_| ()).expect_err("refused");
        assert!(matches!(err, formats::FormatError::ForbiddenGlobal { .. }), "{err}");
        assert!(err.to_string().contains(global), "{err}");
        let o = import(&p, &["--config", det_tiny().to_str().expect("utf-8"), "-o", d.join("x.safetensors").to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(global));
    }
    assert!(!d.join("x.safetensors").exists() && !Path::new("/tmp/pwned").exists());
}

// ---- 10. CLIP's activation ----

/// A CLIP state dict does not record QuickGELU: the import says what it assumed; the user
/// states it with --source-activation, or open_clip's config beside the file does; either
/// is recorded in the report and used by the source forward.
#[test]
fn clip_activation_is_stated_assumed_or_read_from_open_clip_config() {
    let d = tmpdir();
    let cfg = det_tiny();
    let activation = |out: &Path, extra: &[&str], src: &Path| {
        let report = out.with_extension("report.json");
        let mut args = vec!["--config", cfg.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--lossy"];
        args.extend(["--report", report.to_str().expect("utf-8"), "--force"]);
        args.extend_from_slice(extra);
        let o = import(src, &args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
        (text(&o.stdout), r["source_config"]["activation"].clone(), r["source_config"]["assumed"].clone())
    };
    let gelu = fixture("sources/clip/clip_tiny_gelu.pt");
    let (out, act, assumed) = activation(&d.join("a.safetensors"), &[], &gelu);
    assert_eq!(act, "quick-gelu");
    assert!(assumed.as_array().is_some_and(|a| a.iter().any(|x| x == "activation")), "{assumed}");
    assert!(out.contains("does not record its MLP activation: assumed QuickGelu") && out.contains("--source-activation"), "{out}");

    let (out, act, assumed) = activation(&d.join("b.safetensors"), &["--source-activation", "gelu"], &gelu);
    assert_eq!(act, "gelu");
    assert!(!assumed.as_array().is_some_and(|a| a.iter().any(|x| x == "activation")), "{assumed}");
    assert!(out.contains("the MLP activation is Gelu, named by --source-activation"), "{out}");

    // open_clip's hub config beside the file: model_cfg.quick_gelu false -> nn.GELU.
    let side = tmpdir();
    let copy = side.join("open_clip_pytorch_model.bin");
    std::fs::copy(&gelu, &copy).expect("copy");
    std::fs::write(side.join("open_clip_config.json"), br#"{"model_cfg": {"embed_dim": 32, "quick_gelu": false}}"#).expect("json");
    let (out, act, _) = activation(&d.join("c.safetensors"), &[], &copy);
    assert_eq!(act, "gelu");
    assert!(out.contains("named by open_clip_config.json (model_cfg.quick_gelu = false)"), "{out}");
    // ... and as a Hugging Face folder of open_clip's (open_clip_pytorch_model.bin inside).
    let (_, act, _) = activation(&d.join("e.safetensors"), &[], &side);
    assert_eq!(act, "gelu");
    // The flag overrides the config; verify takes it too.
    let (_, act, _) = activation(&d.join("f.safetensors"), &["--source-activation", "quick-gelu"], &copy);
    assert_eq!(act, "quick-gelu");
    let o = cli(&["verify", d.join("b.safetensors").to_str().expect("utf-8"), "--source", gelu.to_str().expect("utf-8"), "--source-activation", "gelu", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).expect("json");
    let parity = v["checks"].as_array().expect("checks").iter().find(|c| c["name"] == "mapping parity image64x64 (clip)").cloned().expect("parity");
    let why = parity["skipped"].as_str().unwrap_or_default();
    assert!(why.contains("ln_pre") && !why.contains("not recorded"), "the activation is stated: {why}");
}

// ---- 11. beit-comer from --flavor runs at any size ----

/// `--flavor beit-comer` gives a windowed layout (the source's own window in every block),
/// states it, verifies exactly and runs at a size other than the pretrain size; a config with
/// global BEiT blocks is warned about: it runs at one size only.
#[test]
fn beit_comer_from_a_flavour_runs_at_any_size() {
    let d = tmpdir();
    let src = fixture("sources/beitv2/beitv2_tiny_ft.pth");
    let out = d.join("b.safetensors");
    let report = d.join("b.report.json");
    let o = import(&src, &["--flavor", "beit-comer", "-o", out.to_str().expect("utf-8"), "--report", report.to_str().expect("utf-8")]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    let target = stdout.lines().nth(2).unwrap_or_default();
    assert!(target.starts_with("target   flavour beit-comer (beit-comer): --flavor beit-comer"), "{stdout}");
    assert!(target.contains("blocks [0, 1, 2, 3] in 4x4 windows") && target.contains("runs at any input size"), "{target}");
    assert!(stdout.lines().nth(3).is_some_and(|l| l.starts_with("verdict  passed")), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert!(r["summary"]["target_reason"].as_str().is_some_and(|t| t.contains("runs at any input size")));
    let input = fixture("forward/det_tiny/inputs.safetensors");
    let o = cli(&["run", "--weights", out.to_str().expect("utf-8"), "--input", input.to_str().expect("utf-8"), "-o", d.join("r.safetensors").to_str().expect("utf-8")]);
    assert!(o.status.success(), "96x128 runs: {}", text(&o.stderr));

    let wide = d.join("w.safetensors");
    let o = import(&src, &["--flavor", "beit-comer", "--img-size", "128", "-o", wide.to_str().expect("utf-8"), "--no-verify"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let recorded: serde_json::Value =
        serde_json::from_str(&formats::open(&wide).expect("artifact").metadata["comer_port.config"]).expect("config");
    assert_eq!(recorded["constructor_kwargs"]["window_size"], serde_json::json!([4, 4, 4, 4]), "stretches of one block keep their window");

    let beit_cfg = fixture("forward/beit_tiny/case.json");
    let o = import(&src, &["--config", beit_cfg.to_str().expect("utf-8"), "-o", d.join("g.safetensors").to_str().expect("utf-8"), "--no-verify"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(stdout.contains("note: beit-comer blocks [1, 3] attend globally") && stdout.contains("runs at 64x64 inputs only"), "{stdout}");
}
