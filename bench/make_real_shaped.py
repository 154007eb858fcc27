#!/usr/bin/env python3
"""Write real-shaped checkpoints (real dimensions, random values) through each library's own save path.

Every parameter is randomised away from its initialisation (weights/biases/position and
relative-position tables ~ N(0, 0.02), LayerNorm weights ~ 1 + N(0, 0.1), layer scales
~ 0.1 + N(0, 0.05)) so no path is trivially zero or identity. One model at a time, freed before
the next. Needs torch, timm, transformers, safetensors, numpy (open_clip_torch optional):

    python3 -m venv /work/venv-gen && /work/venv-gen/bin/pip install torch timm transformers open_clip_torch safetensors numpy
    /work/venv-gen/bin/python bench/make_real_shaped.py [OUT_DIR=/work/real] [--only NAME ...] [--list]

About 4.5 GB in all; the largest file (BEiTv2-large) is ~1.2 GB. Names (see --list):
  deit_tiny, deit_small   facebookresearch/deit {"model": sd}, timm names
  deit3_small             DeiT III small: release names (gamma_1/gamma_2) and timm names (ls1.gamma)
  hf_vit_base             transformers ViTModel.save_pretrained (google/vit-base-patch16-224-in21k config)
  hf_vit_base_cls         transformers ViTForImageClassification.save_pretrained (1000 labels)
  augreg_b16              big_vision/vision_transformer .npz for B/16 (i21k head), checked by timm's .npz loader
  dinov2_vits14, dinov2_vitb14, dinov2_vits14_reg4
                          facebookresearch/dinov2 bare state dicts (img 518: pos_embed 1x1370xD, mask_token 1xD)
  timm_dinov2_reg4        timm hub layout of vit_small_patch14_reg4_dinov2 (save_for_hf: safetensors + bin)
  beitv2_large            microsoft/unilm BEiTv2-large fine-tuned layout {"model": sd}
  open_clip_b16           open_clip ViT-B-16 state dict (visual.* + text tower), torch.save
  siglip_base             transformers SiglipVisionModel.save_pretrained (base, 224, patch 16)
  vit_giant14             timm vit_giant_patch14_224 bare state dict, 4.0 GB (only with --only)
"""
import argparse
import gc
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn

torch.set_grad_enabled(False)


def randomise(module, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    norm_ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
    for name, p in module.named_parameters():
        if id(p) in norm_ids:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif re.search(r"(gamma|gamma_\d|\.ls\d\.gamma)$", name):
            p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(std * torch.randn(p.shape, generator=g))


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def report(path):
    if os.path.isdir(path):
        for r, _, fs in os.walk(path):
            for f in sorted(fs):
                p = os.path.join(r, f)
                print(f"  {p}  {os.path.getsize(p):,} bytes", flush=True)
    else:
        print(f"  {path}  {os.path.getsize(path):,} bytes", flush=True)


def timm_model(name, seed, **kw):
    import timm
    m = timm.create_model(name, pretrained=False, **kw).eval()
    randomise(m, seed)
    return m


# ---------------------------------------------------------------- DeiT
def deit(out, name, fname, seed):
    m = timm_model(name, seed)
    p = os.path.join(out, fname)
    torch.save({"model": m.state_dict()}, p)
    report(p)


def make_deit_tiny(out):
    deit(out, "deit_tiny_patch16_224", "deit_tiny_patch16_224.pth", 101)


def make_deit_small(out):
    deit(out, "deit_small_patch16_224", "deit_small_patch16_224.pth", 102)


def make_deit3_small(out):
    m = timm_model("deit3_small_patch16_224", 103)
    sd = m.state_dict()
    # facebookresearch/deit models_v2 names (dl.fbaipublicfiles.com/deit/deit_3_small_224_1k.pth):
    # gamma_1/gamma_2 registered after norm1, attn, norm2, mlp.
    official = {}
    for k, v in sd.items():
        if k.endswith(".ls1.gamma") or k.endswith(".ls2.gamma"):
            continue
        official[k] = v
        if k.endswith(".mlp.fc2.bias"):
            b = k[: -len(".mlp.fc2.bias")]
            official[b + ".gamma_1"] = sd[b + ".ls1.gamma"]
            official[b + ".gamma_2"] = sd[b + ".ls2.gamma"]
    assert len(official) == len(sd)
    for fname, obj in (("deit_3_small_224_1k.pth", official), ("deit3_small_patch16_224_timm.pth", sd)):
        p = os.path.join(out, fname)
        torch.save({"model": obj}, p)
        report(p)


# ---------------------------------------------------------------- Hugging Face ViT
def make_hf_vit_base(out):
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig()  # == google/vit-base-patch16-224-in21k: 768/12/12/3072, 224, p16, eps 1e-12, gelu
    m = ViTModel(cfg, add_pooling_layer=True).eval()
    randomise(m, 104)
    p = os.path.join(out, "hf-vit-base-patch16-224-in21k")
    m.save_pretrained(p)
    report(p)


def make_hf_vit_base_cls(out):
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(num_labels=1000)
    m = ViTForImageClassification(cfg).eval()
    randomise(m, 105)
    p = os.path.join(out, "hf-vit-base-patch16-224-cls")
    m.save_pretrained(p)
    report(p)


# ---------------------------------------------------------------- AugReg .npz
def timm_vit_to_npz(m):
    """Inverse of timm.models.vision_transformer._load_weights for a plain (non-big_vision) ViT."""
    sd = {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}
    d = m.embed_dim
    h = m.blocks[0].attn.num_heads
    hd = d // h
    w = {}
    w["embedding/kernel"] = sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    w["embedding/bias"] = sd["patch_embed.proj.bias"]
    w["cls"] = sd["cls_token"]
    w["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    w["Transformer/encoder_norm/scale"] = sd["norm.weight"]
    w["Transformer/encoder_norm/bias"] = sd["norm.bias"]
    w["head/kernel"] = sd["head.weight"].T
    w["head/bias"] = sd["head.bias"]
    for i in range(len(m.blocks)):
        b, f = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        w[f + "LayerNorm_0/scale"] = sd[b + "norm1.weight"]
        w[f + "LayerNorm_0/bias"] = sd[b + "norm1.bias"]
        w[f + "LayerNorm_2/scale"] = sd[b + "norm2.weight"]
        w[f + "LayerNorm_2/bias"] = sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            w[f + f"MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, hd)
            w[f + f"MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, hd)
        w[f + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(h, hd, d)
        w[f + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        w[f + "MlpBlock_3/Dense_0/kernel"] = sd[b + "mlp.fc1.weight"].T
        w[f + "MlpBlock_3/Dense_0/bias"] = sd[b + "mlp.fc1.bias"]
        w[f + "MlpBlock_3/Dense_1/kernel"] = sd[b + "mlp.fc2.weight"].T
        w[f + "MlpBlock_3/Dense_1/bias"] = sd[b + "mlp.fc2.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


def make_augreg_b16(out):
    import timm
    # AugReg in21k B/16 (B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz): 21843-class head.
    m = timm_model("vit_base_patch16_224", 106, num_classes=21843)
    w = timm_vit_to_npz(m)
    p = os.path.join(out, "augreg_B_16-i21k-300ep.npz")
    np.savez(p, **w)
    del w
    gc.collect()
    # timm's own .npz loader must read it back exactly.
    m2 = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=21843).eval()
    m2.load_pretrained(p)
    ref = m.state_dict()
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ref[k]), k
    report(p)


# ---------------------------------------------------------------- DINOv2
def dinov2_sd(m, registers=False):
    """timm dinov2 ViT -> facebookresearch/dinov2 DinoVisionTransformer state_dict (hub_model, block_chunks=0).

    Order as DinoVisionTransformer registers it: cls_token, pos_embed, register_tokens, mask_token,
    patch_embed.*, blocks.*, norm.* (head is Identity).
    """
    sd = m.state_dict()
    d = m.embed_dim
    out = {"cls_token": sd["cls_token"], "pos_embed": sd["pos_embed"]}
    if registers:
        out["register_tokens"] = sd["reg_token"]
        # timm (no_embed_class) drops the class row; dinov2 keeps a 1 + 37*37 table.
        cls_row = 0.02 * torch.randn(1, 1, d, generator=torch.Generator().manual_seed(7))
        out["pos_embed"] = torch.cat([cls_row, sd["pos_embed"]], dim=1)
    out["mask_token"] = torch.zeros(1, d)  # released hub checkpoints carry zeros here
    for k, v in sd.items():
        if k in ("cls_token", "pos_embed", "reg_token") or k.startswith("head."):
            continue
        out[k] = v
    return out


def dinov2(out, timm_name, fname, seed, registers=False):
    m = timm_model(timm_name, seed)
    sd = dinov2_sd(m, registers)
    assert sd["pos_embed"].shape[1] == 1370, sd["pos_embed"].shape
    p = os.path.join(out, fname)
    torch.save(sd, p)
    report(p)


def make_dinov2_vits14(out):
    dinov2(out, "vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth", 107)


def make_dinov2_vitb14(out):
    dinov2(out, "vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth", 108)


def make_dinov2_vits14_reg4(out):
    dinov2(out, "vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg4_pretrain.pth", 109, registers=True)


def make_timm_dinov2_reg4(out):
    from timm.models._hub import save_for_hf
    m = timm_model("vit_small_patch14_reg4_dinov2", 109)
    p = os.path.join(out, "timm-vit_small_patch14_reg4_dinov2.lvd142m")
    save_for_hf(m, p, safe_serialization="both")
    report(p)


# ---------------------------------------------------------------- BEiTv2
def make_beitv2_large(out):
    # timm's Beit uses the unilm names except that relative_position_index is a non-persistent buffer
    # there; unilm's checkpoints carry it (int64), right after relative_position_bias_table.
    m = timm_model("beitv2_large_patch16_224", 110)
    sd = m.state_dict()
    bufs = dict(m.named_buffers())
    unilm = {}
    for k, v in sd.items():
        unilm[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            ik = k[: -len("relative_position_bias_table")] + "relative_position_index"
            unilm[ik] = bufs[ik].clone()
    assert unilm["blocks.0.attn.relative_position_bias_table"].shape == ((2 * 14 - 1) ** 2 + 3, 16)
    assert unilm["blocks.0.attn.relative_position_index"].shape == (197, 197)
    p = os.path.join(out, "beitv2_large_patch16_224_pt1k_ft21kto1k.pth")
    torch.save({"model": unilm}, p)
    report(p)


# ---------------------------------------------------------------- open_clip
def make_vit_giant14(out):
    # timm vit_giant_patch14_224 (plain GELU Mlp, 1.0 B parameters, ~4.0 GB): the ViT-g of
    # issue 13's cost target, imported with --flavor vit-comer-det. Not in the default set.
    m = timm_model("vit_giant_patch14_224", 112)
    p = os.path.join(out, "vit_giant_patch14_224.pth")
    torch.save(m.state_dict(), p)
    report(p)


def make_open_clip_b16(out):
    try:
        import open_clip
    except ImportError:
        print("  open_clip not installed: skipped")
        return
    m = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    randomise(m, 111)
    with torch.no_grad():
        m.logit_scale.fill_(4.6052)
    p = os.path.join(out, "open_clip_vit_b16.bin")  # as open_clip_pytorch_model.bin on the hub
    torch.save(m.state_dict(), p)
    report(p)


# ---------------------------------------------------------------- SigLIP
def make_siglip_base(out):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    cfg = SiglipVisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                             image_size=224, patch_size=16)
    m = SiglipVisionModel(cfg).eval()
    randomise(m, 112)
    p = os.path.join(out, "siglip-base-patch16-224-vision")
    m.save_pretrained(p)
    report(p)


MAKERS = {
    "deit_tiny": make_deit_tiny,
    "deit_small": make_deit_small,
    "deit3_small": make_deit3_small,
    "hf_vit_base": make_hf_vit_base,
    "hf_vit_base_cls": make_hf_vit_base_cls,
    "augreg_b16": make_augreg_b16,
    "dinov2_vits14": make_dinov2_vits14,
    "dinov2_vitb14": make_dinov2_vitb14,
    "dinov2_vits14_reg4": make_dinov2_vits14_reg4,
    "timm_dinov2_reg4": make_timm_dinov2_reg4,
    "beitv2_large": make_beitv2_large,
    "open_clip_b16": make_open_clip_b16,
    "siglip_base": make_siglip_base,
    "vit_giant14": make_vit_giant14,
}

# Made only with --only (4 GB).
OPTIONAL = {"vit_giant14"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="/work/real")
    ap.add_argument("--only", nargs="+", choices=sorted(MAKERS), help="make only these")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(MAKERS))
        return
    os.makedirs(a.out, exist_ok=True)
    import timm
    import transformers
    print(f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}", flush=True)
    for name in a.only or [n for n in MAKERS if n not in OPTIONAL]:
        t = time.time()
        print(f"== {name}", flush=True)
        MAKERS[name](a.out)
        gc.collect()
        print(f"   ({time.time() - t:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
