//! The newcomer's path (issue 15): `import X` with no target flags picks the preset; hub
//! wrapper layouts (Hugging Face `ViTForImageClassification`, timm's DINOv2 with and without
//! registers) import like the bare layouts they wrap; conflicting flags, unknown families and
//! re-imported artifacts get usage errors or messages that say what happened; outputs are
//! named after the artifact; `run`/`export` warn about an unverified artifact.

use crate::util::{bin, fixture, tmpdir};
use comer_port::export::safetensors::OutTensor;
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
        for (n, s) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![4 * d, d]),
            ("mlp.fc1.bias", vec![4 * d]),
            ("mlp.fc2.weight", vec![d, 4 * d]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            t.push((format!("blocks.{i}.{n}"), s));
        }
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
