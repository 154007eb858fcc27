//! Artifacts that lie (issue 13): verify takes nothing on trust from the artifact. A wrong
//! head count in its config, fresh parameters that are not upstream's init from the recorded
//! seed, a false `lossy` claim, a narrow first tensor, a wrong source hash — each exits 1
//! naming the check and the key; a `--lossy` CLIP import is *lossy*, never *passed*.

use crate::util::{bin, fixture, import_source, tmpdir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SOURCE: &str = "sources/deit/deit_tiny.pth";

fn import(dir: &Path, src: &str, extra: &[&str]) -> (PathBuf, String) {
    let out = dir.join("a.safetensors");
    let st = bin()
        .arg("import")
        .arg(fixture(src))
        .args(["--config", &fixture("forward/det_tiny/case.json").to_string_lossy()])
        .arg("-o")
        .arg(&out)
        .args(extra)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    (out, String::from_utf8_lossy(&st.stdout).into_owned())
}

/// Rewrite `src` into `dst`: `meta` edits the metadata, `edit(name, dtype, bytes)` each tensor.
fn rewrite(
    src: &Path,
    dst: &Path,
    meta: impl FnOnce(&mut HashMap<String, String>),
    mut edit: impl FnMut(&str, &mut safetensors::Dtype, &mut Vec<u8>),
) {
    let bytes = std::fs::read(src).expect("read");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut m = header.metadata().clone().unwrap_or_default();
    meta(&mut m);
    let mut owned = Vec::new();
    for (name, v) in st.tensors() {
        let (mut dtype, mut data) = (v.dtype(), v.data().to_vec());
        edit(&name, &mut dtype, &mut data);
        owned.push((name, dtype, v.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(m)).expect("serialize")).expect("write");
}

/// Scale every f32 of `data` by `f`.
fn scale(data: &mut [u8], f: f32) {
    for c in data.chunks_exact_mut(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * f;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// `verify ART --source SOURCE`: exit code and stdout + stderr.
fn verify(art: &Path, src: &str) -> (Option<i32>, String) {
    let out = bin().arg("verify").arg(art).arg("--source").arg(fixture(src)).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn the_untampered_artifact_passes_every_provenance_check() {
    let d = tmpdir();
    let (art, _) = import(&d, SOURCE, &[]);
    let (code, text) = verify(&art, SOURCE);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("source sha256") && text.contains("fresh parameters (seed 0)"), "{text}");
    assert!(text.contains("verdict: passed"), "{text}");
}

#[test]
fn a_wrong_head_count_in_the_metadata_fails_parity() {
    for heads in [1, 48] {
        let d = tmpdir();
        let (art, _) = import(&d, SOURCE, &[]);
        let bad = d.join("heads.safetensors");
        rewrite(
            &art,
            &bad,
            |m| {
                let mut cfg: serde_json::Value = serde_json::from_str(&m["comer_port.config"]).expect("config");
                cfg["constructor_kwargs"]["num_heads"] = heads.into();
                m.insert("comer_port.config".into(), cfg.to_string());
            },
            |_, _, _| {},
        );
        let (code, text) = verify(&bad, SOURCE);
        assert_eq!(code, Some(1), "{heads} heads: {text}");
        assert!(text.contains("mapping parity"), "{text}");
    }
}

#[test]
fn fresh_parameters_scaled_zeroed_or_negated_are_named() {
    for key in ["level_embed", "interactions.0.cti_tov.attn.value_proj.weight", "spm.stem.0.weight"] {
        for f in [1000.0f32, 0.0, -1.0] {
            let d = tmpdir();
            let (art, _) = import(&d, SOURCE, &[]);
            let bad = d.join("fresh.safetensors");
            let mut found = false;
            rewrite(&art, &bad, |_| {}, |name, _, data| {
                if name == key {
                    found = true;
                    scale(data, f);
                }
            });
            assert!(found, "{key} is a key of the det_tiny layout");
            let (code, text) = verify(&bad, SOURCE);
            assert_eq!(code, Some(1), "{key} x{f}: {text}");
            assert!(text.contains(&format!("`{key}` is not upstream's init from seed 0")), "{key} x{f}: {text}");
        }
    }
}

#[test]
fn a_false_lossy_claim_does_not_loosen_parity() {
    let d = tmpdir();
    let (art, _) = import(&d, SOURCE, &[]);
    let bad = d.join("lossy.safetensors");
    rewrite(
        &art,
        &bad,
        |m| {
            let t = r#"{"decisions":["dropped 'blocks.0.norm1.weight' (--lossy): claimed"],"lossy":true,"patch_resize":"bilinear","pos_resize":"bicubic","relpos_resize":"bicubic","used":["rename"]}"#;
            m.insert("comer_port.transforms".into(), t.into());
        },
        |name, _, data| {
            if name == "blocks.1.mlp.fc1.weight" {
                scale(data, 1.004);
            }
        },
    );
    let (code, text) = verify(&bad, SOURCE);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("lossy import"), "the claim is not believed: {text}");
}

#[test]
fn one_f16_tensor_does_not_loosen_the_others() {
    let d = tmpdir();
    let (art, _) = import(&d, SOURCE, &[]);
    let bad = d.join("f16.safetensors");
    let mut first = true;
    rewrite(&art, &bad, |_| {}, |name, dtype, data| {
        if *dtype == safetensors::Dtype::F32 && first {
            first = false;
            *dtype = safetensors::Dtype::F16;
            *data = data
                .chunks_exact(4)
                .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect();
        }
        if name == "blocks.1.mlp.fc1.weight" {
            scale(data, 1.004);
        }
    });
    let (code, text) = verify(&bad, SOURCE);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("mapping parity"), "{text}");
}

#[test]
fn a_wrong_source_hash_is_named() {
    let d = tmpdir();
    let (art, _) = import(&d, SOURCE, &[]);
    let bad = d.join("sha.safetensors");
    rewrite(&art, &bad, |m| {
        m.insert("comer_port.source_sha256".into(), "ab".repeat(32));
    }, |_, _, _| {});
    let (code, text) = verify(&bad, SOURCE);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("source sha256") && text.contains(&"ab".repeat(32)), "{text}");
}

#[test]
fn a_lossy_clip_import_is_lossy_never_passed() {
    let d = tmpdir();
    let (art, stdout) = import(&d, "sources/clip/clip_tiny_gelu.pt", &["--lossy"]);
    assert!(stdout.contains("verdict: lossy"), "{stdout}");
    let ck = comer_port::formats::open(&art).expect("artifact");
    let v: serde_json::Value = serde_json::from_str(&ck.metadata["comer_port.verify"]).expect("verdict");
    assert_eq!(v["verdict"], "lossy", "{v}");
    let (code, text) = verify(&art, "sources/clip/clip_tiny_gelu.pt");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verdict: lossy") && text.contains("cosine"), "{text}");
}

const BEIT: &str = "sources/beitv2/beitv2_tiny_ft.pth";

/// beit_tiny: blocks 0 and 2 attend in 2x2 windows (their 7x7 source tables resized to 3x3
/// at import), blocks 1 and 3 globally on the 4x4 grid (tables copied).
fn import_beit(dir: &Path) -> PathBuf {
    import_source(BEIT.trim_start_matches("sources/"), &fixture("forward/beit_tiny/case.json"), &[], dir)
}

/// Add `delta` to the f32 at `index` (negative: from the end).
fn nudge(data: &mut [u8], index: isize, delta: f32) {
    let n = data.len() / 4;
    let i = if index < 0 {
        n - index.unsigned_abs()
    } else {
        index as usize
    };
    let c = &mut data[4 * i..4 * i + 4];
    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + delta;
    c.copy_from_slice(&x.to_le_bytes());
}

#[test]
fn beit_windowed_blocks_are_proven_by_mapping_parity() {
    let d = tmpdir();
    let art = import_beit(&d);
    let (code, text) = verify(&art, BEIT);
    assert_eq!(code, Some(0), "{text}");
    let parity = text
        .lines()
        .find(|l| l.starts_with("mapping parity image32x32"))
        .unwrap_or_default();
    assert!(parity.ends_with("exact"), "parity ran and held: {text}");
    assert!(
        text.contains("relative-position tables (4 blocks)"),
        "{text}"
    );
}

#[test]
fn beit_tampered_block_or_table_is_named() {
    let d = tmpdir();
    let art = import_beit(&d);
    // (tensor, index, what verify names): a weight of a block with a resized table, the
    // corner of a copied 7x7 table that the 2x2 parity grid never reads, a resized table.
    let cases: [(&str, isize, &str); 3] = [
        ("blocks.0.mlp.fc1.weight", 5, "first parts after blocks.0"),
        (
            "blocks.1.attn.relative_position_bias_table",
            -1,
            "`blocks.1.attn.relative_position_bias_table` differs",
        ),
        (
            "blocks.2.attn.relative_position_bias_table",
            0,
            "`blocks.2.attn.relative_position_bias_table` differs",
        ),
    ];
    for (key, index, named) in cases {
        let bad = d.join(format!("{key}.safetensors"));
        rewrite(
            &art,
            &bad,
            |_| {},
            |n, _, data| {
                if n == key {
                    nudge(data, index, 0.05);
                }
            },
        );
        let (code, text) = verify(&bad, BEIT);
        assert_eq!(code, Some(1), "{key}: {text}");
        assert!(text.contains(named), "{key}: {text}");
    }
}

/// The int64 `relative_position_index` buffers the artifact carries are fresh tensors too:
/// one index moved fails the fresh-parameter check, naming the buffer (they are checked in
/// place, value by value, against upstream's formula).
#[test]
fn beit_altered_relative_position_index_is_named() {
    let d = tmpdir();
    let art = import_beit(&d);
    let key = "blocks.3.attn.relative_position_index";
    let bad = d.join("index.safetensors");
    let mut seen = false;
    rewrite(
        &art,
        &bad,
        |_| {},
        |n, dtype, data| {
            if n == key {
                assert_eq!(*dtype, safetensors::Dtype::I64);
                let last = data.len() - 8;
                let v = i64::from_le_bytes(data[last..].try_into().expect("8 bytes")) + 1;
                data[last..].copy_from_slice(&v.to_le_bytes());
                seen = true;
            }
        },
    );
    assert!(seen, "the artifact carries {key}");
    let (code, text) = verify(&bad, BEIT);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("`{key}` is not upstream's relative_position_index")), "{text}");
}

#[test]
fn a_bilinear_14_to_16_import_is_proven_from_shared_patch_tokens() {
    const DINO: &str = "sources/dinov2/dinov2_tiny_vits14.pth";
    let d = tmpdir();
    let (art, _) = import(&d, DINO, &[]);
    let (code, text) = verify(&art, DINO);
    assert_eq!(code, Some(0), "{text}");
    let row = |t: &str, start: &str| t.lines().find(|l| l.starts_with(start)).unwrap_or_default().to_string();
    assert!(row(&text, "patch kernel 14 -> 16 (bilinear)").ends_with("exact"), "{text}");
    assert!(row(&text, "mapping parity image56x56 -> 64x64 (source patch tokens)").ends_with("exact"), "{text}");
    for (key, named) in [
        ("patch_embed.proj.weight", "`patch_embed.proj.weight` is not the bilinear resize"),
        ("blocks.1.mlp.fc2.weight", "first parts after blocks.1"),
    ] {
        let bad = d.join(format!("{key}.safetensors"));
        rewrite(&art, &bad, |_| {}, |n, _, data| {
            if n == key {
                nudge(data, 3, 0.05);
            }
        });
        let (code, text) = verify(&bad, DINO);
        assert_eq!(code, Some(1), "{key}: {text}");
        assert!(text.contains(named), "{key}: {text}");
    }
}

/// A bare timm state dict (embed 32, depth 4) on an 8x8 grid of 16-pixel
/// patches, seeded values: a global-attention source whose parity runs at the small grid.
fn timm_grid8(dir: &Path) -> PathBuf {
    let d = 32usize;
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, 65, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, 16, 16]),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    for i in 0..4 {
        t.extend(comer_port::formats::testkit::timm_block(i, d));
    }
    let mut state = 7u32;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .into_iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            // LayerNorm weights near 1, the rest in [-0.25, 0.25): attention that is not uniform.
            let (base, spread) = if k.contains("norm") && k.ends_with("weight") { (1.0, 0.2) } else { (0.0, 0.5) };
            let b = (0..n)
                .flat_map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (base + ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * spread).to_le_bytes()
                })
                .collect();
            (k, s, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view")))
        .collect();
    let path = dir.join("vit_grid8.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).expect("serialize")).expect("write");
    path
}

/// A global-attention import whose table is the source's runs parity at a quarter of its
/// grid (8x8 -> 4x4, one size), exact, with the position table held bit for bit: a row
/// changed in the table fails both, naming `pos_embed`.
#[test]
fn a_global_attention_import_is_proven_at_the_small_grid_with_its_table_bit_for_bit() {
    let d = tmpdir();
    let src = timm_grid8(&d);
    let art = d.join("g.safetensors");
    let out = bin().arg("import").arg(&src).args(["--flavor", "vit-comer-seg", "-o"]).arg(&art).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let verify_at = |art: &Path| {
        let o = bin().arg("verify").arg(art).arg("--source").arg(&src).arg("--json").output().expect("runs");
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        (o.status.code(), j)
    };
    let (code, j) = verify_at(&art);
    assert_eq!(code, Some(0), "{j:#}");
    let checks = j["checks"].as_array().expect("checks").clone();
    let named = |n: &str| checks.iter().find(|c| c["name"] == n).cloned().unwrap_or_else(|| panic!("no `{n}` in {j:#}"));
    let table = named("position table");
    assert_eq!(table["passed"], true, "{table:#}");
    assert!(table["note"].as_str().is_some_and(|n| n.contains("bit for bit")), "{table:#}");
    let parity: Vec<&serde_json::Value> =
        checks.iter().filter(|c| c["name"].as_str().unwrap_or("").starts_with("mapping parity")).collect();
    assert_eq!(parity.len(), 1, "one small grid: {j:#}");
    assert_eq!(parity[0]["name"], "mapping parity image64x64 (timm-vit)");
    assert_eq!(parity[0]["passed"], true);
    assert!(parity[0]["max_rel"].as_f64().unwrap_or(1.0) <= 1e-5, "{:#}", parity[0]);
    // The last row of the table (a corner of the grid) moved.
    let bad = d.join("bad.safetensors");
    rewrite(&art, &bad, |_| {}, |n, _, data| {
        if n == "pos_embed" {
            let at = data.len() - 4;
            let x = f32::from_le_bytes(data[at..].try_into().expect("4 bytes")) + 0.5;
            data[at..].copy_from_slice(&x.to_le_bytes());
        }
    });
    let (code, j) = verify_at(&bad);
    assert_eq!(code, Some(1), "{j:#}");
    let table = j["checks"].as_array().expect("checks").iter().find(|c| c["name"] == "position table").cloned().unwrap_or_default();
    assert_eq!(table["passed"], false, "{j:#}");
    assert!(table["note"].as_str().is_some_and(|n| n.contains("`pos_embed` is not")), "{table:#}");
    // The small grid still parts the sides on a block's weight (naming the block) and on a
    // wrong head count in the metadata.
    let parity_note = |j: &serde_json::Value| {
        let c = j["checks"].as_array().expect("checks").iter().find(|c| c["name"] == "mapping parity image64x64 (timm-vit)").cloned();
        let c = c.unwrap_or_else(|| panic!("no parity row: {j:#}"));
        assert_eq!(c["passed"], false, "{c:#}");
        c["note"].as_str().unwrap_or_default().to_string()
    };
    rewrite(&art, &bad, |_| {}, |n, _, data| {
        if n == "blocks.2.attn.qkv.weight" {
            nudge(data, 5, 0.25);
        }
    });
    let (code, j) = verify_at(&bad);
    assert_eq!(code, Some(1), "{j:#}");
    assert!(parity_note(&j).contains("first parts after blocks.2"), "{j:#}");
    rewrite(
        &art,
        &bad,
        |m| {
            let mut cfg: serde_json::Value = serde_json::from_str(&m["comer_port.config"]).expect("config");
            let heads = cfg["constructor_kwargs"]["num_heads"].as_u64().expect("num_heads");
            cfg["constructor_kwargs"]["num_heads"] = (if heads == 1 { 4 } else { 1 }).into();
            m.insert("comer_port.config".into(), cfg.to_string());
        },
        |_, _, _| {},
    );
    let (code, j) = verify_at(&bad);
    assert_eq!(code, Some(1), "{j:#}");
    parity_note(&j);
    // A change far inside the forward's bound is still not the mapping of the source.
    rewrite(&art, &bad, |_| {}, |n, _, data| {
        if n == "blocks.1.mlp.fc2.weight" {
            nudge(data, 3, 1e-5);
        }
    });
    let o = bin().arg("verify").arg(&bad).arg("--source").arg(&src).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{text}");
    let row = text.lines().find(|l| l.starts_with("mapping parity image64x64")).unwrap_or_default();
    assert!(row.ends_with("exact"), "the forward cannot tell: {text}");
    assert!(text.contains("`blocks.1.mlp.fc2.weight` is not the mapping of the source"), "{text}");
    assert!(!text.contains("bound 0.0e0"), "no figures quoted for a bitwise check: {text}");
}
