//! Source-family forwards (`Family::source_vit`, one per `families/<family>.rs`) against the
//! `vit_tokens.*` goldens of `fixtures/sources/*/golden.safetensors` (issue 5), and mapping
//! parity on target names.
//!
//! Bound: max|got - exp| <= 1e-5 * max(1, max|exp|), the same for every family and container.

use candle_core::Tensor;
use comer_port::families::detect::{self, Activation};
use comer_port::families::{self, Keys, SourceConfig};
use comer_port::formats;
use comer_port::model::plain_vit::Weights;
use comer_port::verify::parity::{SourceSide, TargetSide};
use comer_port::verify::policy::EXACT_BOUND;
use comer_port::verify::{Check, TargetFlavour, mapping_parity, seeded_images};

use crate::util::fixture;

const HEADS: usize = 3;

/// The source's own config as `family`'s detector reads it (HF `config.json` included).
fn source_config(family: &str, ckpt: &formats::Checkpoint) -> SourceConfig {
    let (wrapper, sd) = ckpt.state_dict();
    let meta = detect::checkpoint_meta(ckpt, wrapper);
    families::by_name(family).unwrap().config(&Keys::new(&sd), &meta).unwrap()
}

/// `family`'s own forward of the checkpoint at `ckpt` on `image`; `activation` overrides
/// the detected one (a CLIP state dict does not record it).
fn source_tokens(family: &str, ckpt: &str, image: &Tensor, activation: Option<Activation>) -> Tensor {
    let ck = formats::open(&fixture(ckpt)).unwrap_or_else(|e| panic!("{ckpt}: {e}"));
    let mut sc = source_config(family, &ck);
    assert_eq!(sc.num_heads, HEADS, "{ckpt}");
    if let Some(a) = activation {
        sc.activation = a;
    }
    let w = Weights::from_checkpoint(&ck).unwrap_or_else(|e| panic!("{ckpt}: {e}"));
    let f = families::by_name(family).unwrap();
    f.source_vit(&w, &sc).and_then(|v| v.forward(image)).unwrap_or_else(|e| panic!("{ckpt}: {e}"))
}

fn weights(rel: &str) -> Weights {
    let ckpt = formats::open(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Weights::from_checkpoint(&ckpt).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap()
}

/// Run `family` on the golden's `image` and hold it to `key` within 1e-5 relative.
fn assert_golden(family: &str, activation: Option<Activation>, ckpt: &str, dir: &str, key: &str, image: &str) {
    let golden = weights(&format!("sources/{dir}/golden.safetensors"));
    let img = golden.get(image).unwrap();
    let exp = golden.get(key).unwrap();
    let got = source_tokens(family, ckpt, &img, activation);
    assert_eq!(got.dims(), exp.dims(), "{ckpt}: {key}");
    let check = Check::new(
        format!("{ckpt} {key}"),
        exp.dims(),
        &flat(&got),
        &flat(&exp),
        1e-5,
    );
    assert!(check.passed, "{check:#?}");
}

#[test]
fn hf_vit_matches_golden() {
    assert_golden("hf-vit", None, "sources/hf_vit/vit-tiny-in21k", "hf_vit", "vit_tokens.image64", "image64");
}

#[test]
fn deit_matches_golden_at_pretrain_and_resized() {
    for image in ["image64", "image96x128"] {
        let key = format!("vit_tokens.{image}");
        assert_golden(
            "deit",
            None,
            "sources/deit/deit_tiny.pth",
            "deit",
            &key,
            image,
        );
    }
}

#[test]
fn deit_distilled_drops_two_prefix_rows() {
    let (ckpt, key) = (
        "sources/deit/deit_tiny_distilled.pth",
        "vit_tokens_distilled.image64",
    );
    assert_golden("deit", None, ckpt, "deit", key, "image64");
}

#[test]
fn deit_other_containers_match_golden() {
    for ckpt in [
        "sources/deit/deit_tiny_legacy.pth",
        "sources/deit/deit_tiny_ddp_wrapped.pth",
    ] {
        assert_golden(
            "deit",
            None,
            ckpt,
            "deit",
            "vit_tokens.image64",
            "image64",
        );
    }
}

#[test]
fn beitv2_finetuned_matches_golden() {
    let ckpt = "sources/beitv2/beitv2_tiny_ft.pth";
    assert_golden(
        "beit",
        None,
        ckpt,
        "beitv2",
        "vit_tokens.image64",
        "image64",
    );
}

#[test]
fn clip_both_activations_match_golden() {
    let cases = [
        (
            "sources/clip/clip_tiny_gelu.pt",
            Activation::Gelu,
            "vit_tokens_gelu.image64",
        ),
        (
            "sources/clip/clip_tiny_quickgelu.pt",
            Activation::QuickGelu,
            "vit_tokens_quickgelu.image64",
        ),
    ];
    for (ckpt, activation, key) in cases {
        assert_golden(
            "clip",
            Some(activation),
            ckpt,
            "clip",
            key,
            "image64",
        );
    }
}

#[test]
fn clip_torchscript_matches_golden() {
    let (ckpt, key) = (
        "sources/clip/clip_tiny_quickgelu_visual_jit.pt",
        "vit_tokens_quickgelu.image64",
    );
    assert_golden("clip", None, ckpt, "clip", key, "image64");
}

#[test]
fn uniperceiver_matches_golden() {
    let ckpt = "sources/uniperceiver/uniperceiver_tiny_pretrained.pth";
    assert_golden(
        "uniperceiver",
        None,
        ckpt,
        "uniperceiver",
        "vit_tokens.image64",
        "image64",
    );
}

#[test]
fn augreg_npz_matches_golden() {
    let ckpt = "sources/augreg/augreg_tiny.npz";
    assert_golden(
        "augreg-npz",
        None,
        ckpt,
        "augreg",
        "vit_tokens.image64",
        "image64",
    );
}

#[test]
fn dinov2_and_mae_run_finite() {
    // No vit_tokens golden for these two: shape and finiteness only.
    let cases = [
        ("sources/dinov2/dinov2_tiny_vits14.pth", "dinov2", 56),
        ("sources/dinov2/dinov2_tiny_vits14_reg4.pth", "dinov2", 56),
        ("sources/mae/mae_tiny_pretrain.pth", "mae", 64),
    ];
    for (ckpt, family, size) in cases {
        let img = &seeded_images(1, (size, size), 14).unwrap()[0].1;
        let out = source_tokens(family, ckpt, img, None);
        assert_eq!(out.dims(), &[1, 16, 48], "{ckpt}");
        assert!(flat(&out).iter().all(|v| v.is_finite()), "{ckpt}");
    }
}

/// The HF ViT tensors renamed to the `vit-comer` target layout, as an exact import would
/// (q/k/v concatenated, layer scale 1), with `tamper` applied to the named target key.
fn hf_as_vit_comer(hf: &Weights, tamper: Option<&str>) -> Weights {
    let mut t = Weights::default();
    let e = "embeddings";
    t.insert(
        "patch_embed.proj.weight",
        hf.get(&format!("{e}.patch_embeddings.projection.weight"))
            .unwrap(),
    );
    t.insert(
        "patch_embed.proj.bias",
        hf.get(&format!("{e}.patch_embeddings.projection.bias"))
            .unwrap(),
    );
    t.insert(
        "pos_embed",
        hf.get(&format!("{e}.position_embeddings")).unwrap(),
    );
    for i in 0..4 {
        let (s, d) = (format!("encoder.layer.{i}"), format!("blocks.{i}"));
        let a = format!("{s}.attention.attention");
        for part in ["weight", "bias"] {
            let qkv =
                ["query", "key", "value"].map(|n| hf.get(&format!("{a}.{n}.{part}")).unwrap());
            t.insert(
                &format!("{d}.attn.qkv.{part}"),
                Tensor::cat(&qkv, 0).unwrap(),
            );
            for (src, dst) in [
                ("layernorm_before", "norm1"),
                ("attention.output.dense", "attn.proj"),
                ("layernorm_after", "norm2"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ] {
                t.insert(
                    &format!("{d}.{dst}.{part}"),
                    hf.get(&format!("{s}.{src}.{part}")).unwrap(),
                );
            }
        }
        let ones = Tensor::ones(48, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        t.insert(&format!("{d}.gamma1"), ones.clone());
        t.insert(&format!("{d}.gamma2"), ones);
    }
    if let Some(key) = tamper {
        let x = t.get(key).unwrap();
        t.insert(key, (x + 1e-3).unwrap());
    }
    t
}

#[test]
fn mapping_parity_hf_vit_eps_change_is_small_and_tamper_is_named() {
    let ck = formats::open(&fixture("sources/hf_vit/vit-tiny-in21k")).unwrap();
    let sc = source_config("hf-vit", &ck);
    assert_eq!(sc.layernorm_eps, 1e-12);
    let hf = weights("sources/hf_vit/vit-tiny-in21k/model.safetensors");
    let source = SourceSide { family: families::by_name("hf-vit").unwrap(), config: &sc, weights: &hf };
    let inputs = seeded_images(5, (64, 64), 16).unwrap();

    // eps 1e-12 -> 1e-6 is an approximate mapping: stated bound 1e-4 relative.
    let target_w = hf_as_vit_comer(&hf, None);
    let target = TargetSide {
        flavour: TargetFlavour::VitComer,
        weights: &target_w,
        num_heads: HEADS,
    };
    let report = mapping_parity(&source, &target, &inputs, 1e-4).unwrap();
    assert!(report.passed(), "{}", report.render_table());
    assert_eq!(report.checks.len(), 2);
    assert!(report.checks.iter().all(|c| c.figures.cosine > 0.999_999));

    // Same tensors with the source's own eps on both sides would be exact; here a perturbed
    // block-2 tensor must fail the exact bound and be located.
    let tampered = hf_as_vit_comer(&hf, Some("blocks.2.mlp.fc1.weight"));
    let target = TargetSide {
        flavour: TargetFlavour::VitComer,
        weights: &tampered,
        num_heads: HEADS,
    };
    let report = mapping_parity(&source, &target, &inputs, EXACT_BOUND).unwrap();
    assert!(!report.passed());
    let failed = report.first_failure().unwrap();
    assert_eq!(
        failed.note.as_deref(),
        Some("first parts after encoder.layer.2")
    );
}

#[test]
fn target_vit_runs_on_a_vit_comer_fixture() {
    let w = weights("forward/det_tiny/weights.safetensors");
    let inputs = seeded_images(3, (64, 64), 16).unwrap();
    let vit = comer_port::verify::target_vit(TargetFlavour::VitComer, &w, HEADS).unwrap();
    for (name, img) in &inputs {
        let out = vit.forward(img).unwrap();
        let (h, wd) = (img.dims()[2] / 16, img.dims()[3] / 16);
        assert_eq!(out.dims(), &[1, h * wd, 48], "{name}");
        assert!(flat(&out).iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn relative_index_matches_the_stored_unilm_index() {
    let w = weights("sources/beitv2/beitv2_tiny_ft.pth");
    let stored = w.get("blocks.0.attn.relative_position_index").unwrap(); // (17, 17)
    let stored = stored
        .narrow(0, 1, 16)
        .and_then(|t| t.narrow(1, 1, 16))
        .unwrap(); // (16, 16)
    let ours: Vec<f32> = comer_port::model::relative_position_index(4)
        .iter()
        .map(|&i| i as f32)
        .collect();
    assert_eq!(flat(&stored), ours);
}

#[test]
fn shared_table_equals_the_same_table_per_block() {
    let shared = weights("sources/beitv2/beitv2_tiny_pt_shared_relpos.pth");
    let mut per_block = shared.clone();
    let table = shared
        .get("rel_pos_bias.relative_position_bias_table")
        .unwrap();
    for i in 0..4 {
        per_block.insert(
            &format!("blocks.{i}.attn.relative_position_bias_table"),
            table.clone(),
        );
    }
    // A per-block table wins over the shared one: zero the shared one to prove it is unused.
    per_block.insert(
        "rel_pos_bias.relative_position_bias_table",
        table.zeros_like().unwrap(),
    );
    let img = &seeded_images(9, (64, 64), 16).unwrap()[0].1;
    let ck = formats::open(&fixture("sources/beitv2/beitv2_tiny_pt_shared_relpos.pth")).unwrap();
    let sc = source_config("beit", &ck);
    let beit = families::by_name("beit").unwrap();
    let a = beit.source_vit(&shared, &sc).and_then(|v| v.forward(img)).unwrap();
    let b = beit.source_vit(&per_block, &sc).and_then(|v| v.forward(img)).unwrap();
    assert_eq!(flat(&a), flat(&b));
}

#[test]
fn hf_vit_folder_matches_golden_with_eps_from_config() {
    let ckpt = formats::open(&fixture("sources/hf_vit/vit-tiny-in21k")).unwrap();
    assert_eq!(source_config("hf-vit", &ckpt).layernorm_eps, 1e-12);
    let golden = weights("sources/hf_vit/golden.safetensors");
    let got = source_tokens("hf-vit", "sources/hf_vit/vit-tiny-in21k", &golden.get("image64").unwrap(), None);
    let exp = golden.get("vit_tokens.image64").unwrap();
    let check = Check::new("hf folder", exp.dims(), &flat(&got), &flat(&exp), 1e-5);
    assert!(check.passed, "{check:#?}");
}
