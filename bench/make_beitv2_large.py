"""Write a BEiTv2-large-shaped checkpoint in the microsoft/unilm fine-tuned layout.

`{"model": state_dict}` through `torch.save` (zip format), 24 blocks, embed 1024, 16 heads,
per-block relative-position tables of (2·14−1)² + 3 rows and their int64 index buffers,
seeded random values: 304 M parameters, about 1.22 GB — the input BENCHMARKS.md describes.

Usage: python bench/make_beitv2_large.py OUT.pth [--seed 0]
"""
import argparse

import torch


def relative_position_index(w):
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    idx = torch.zeros((w * w + 1, w * w + 1), dtype=torch.int64)
    idx[1:, 1:] = rel[..., 0] * (2 * w - 1) + rel[..., 1]
    n = (2 * w - 1) ** 2
    idx[0, 0:], idx[0:, 0], idx[0, 0] = n, n + 1, n + 2
    return idx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    d, depth, heads, w = 1024, 24, 16, 14
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    sd = {"cls_token": r(1, 1, d), "patch_embed.proj.weight": r(d, 3, 16, 16), "patch_embed.proj.bias": r(d)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "gamma_1": r(d), p + "gamma_2": r(d),
            p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
            p + "attn.q_bias": r(d), p + "attn.v_bias": r(d),
            p + "attn.relative_position_bias_table": r((2 * w - 1) ** 2 + 3, heads),
            p + "attn.relative_position_index": relative_position_index(w),
            p + "attn.qkv.weight": r(3 * d, d),
            p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
            p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
            p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d),
        })
    sd.update({"fc_norm.weight": 1 + r(d), "fc_norm.bias": r(d), "head.weight": r(1000, d), "head.bias": r(1000)})
    torch.save({"model": sd}, a.out)


if __name__ == "__main__":
    main()
