"""The Python pipeline a user runs today to import BEiTv2-large into the Co-DETR beit-comer-L
layout — the baseline `comer-port import` is measured against (BENCHMARKS.md):
`torch.load(weights_only=True)`, build every target tensor (fresh init for the CNN/CTI parts,
int64 `relative_position_index` buffers), drop the 3 cls rows and bicubic-resize every
relative-position table to its block's window, `safetensors.torch.save_file`.

The target names/shapes come from `fixtures/layouts/beit-comer_large_codetr.json` (upstream's
exact state dict), so the output has the same tensors `comer-port import` writes.

Usage: python bench/python_import.py IN.pth OUT.safetensors [--layout JSON]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def rel_index(w):
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def resize_table(table, dst_w):
    t = table[:-3]  # drop the 3 cls rows
    src = int(math.isqrt(t.shape[0]))
    dst = 2 * dst_w - 1
    if src == dst:
        return t.clone()
    grid = t.T.reshape(1, -1, src, src)
    return F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False).reshape(-1, dst * dst).T.contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--layout", default="fixtures/layouts/beit-comer_large_codetr.json")
    a = ap.parse_args()
    layout = json.load(open(a.layout))
    windows = layout["constructor_kwargs"]["window_size"]
    src = torch.load(a.src, map_location="cpu", weights_only=True)["model"]
    torch.manual_seed(0)
    out = {}
    for name, shape, dtype in layout["state_dict"]:
        if name in src and "relative_position" not in name:
            out[name] = src[name]
        elif name.endswith("relative_position_bias_table"):
            blk = int(name.split(".")[1])
            out[name] = resize_table(src[name], windows[blk])
        elif name.endswith("relative_position_index"):
            out[name] = rel_index(windows[int(name.split(".")[1])])
        elif dtype == "int64":
            out[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith(("running_var", "weight")) and len(shape) == 1:
            out[name] = torch.ones(shape)
        elif len(shape) >= 2:
            out[name] = torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02)
        else:
            out[name] = torch.zeros(shape)
        assert list(out[name].shape) == shape, (name, out[name].shape, shape)
    save_file(out, a.out)


if __name__ == "__main__":
    main()
