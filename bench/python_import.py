"""The Python pipeline a user runs today to import BEiTv2-large into the Co-DETR beit-comer-L
layout — the baseline `comer-port import` is measured against (BENCHMARKS.md):
`torch.load(weights_only=True)`, build every target tensor (fresh init for the CNN/CTI parts,
int64 `relative_position_index` buffers), drop the 3 cls rows and bicubic-resize every
relative-position table to its block's window, `safetensors.torch.save_file`.

The target names/shapes come from `fixtures/layouts/beit-comer_large_codetr.json` (upstream's
exact state dict), so the output has the same tensors `comer-port import` writes.

`--build-module` is the pipeline BENCHMARKS.md times (15.6 s, 3.7 GB there): what building
upstream's module costs before `load_state_dict` — every parameter of the layout allocated and
initialised as module construction does it (`nn.Linear`/`nn.Conv2d` constructors run
`kaiming_uniform_` on weights and `uniform_` on biases, then the model's `_init_weights`
re-initialises Linear weights with `trunc_normal_(std=.02)` and conv weights with
`normal_(0, sqrt(2/fan_out))`, norms with ones/zeros), then the source copied in (`copy_`, as
`load_state_dict` does) — emulated on the layout's names and shapes, since upstream's code is
not vendored here. Without it the tensors are built directly (a leaner pipeline than users run).

Usage: python bench/python_import.py IN.pth OUT.safetensors [--layout JSON] [--build-module]
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
    ap.add_argument("--build-module", action="store_true", help="initialise every parameter first, then load (BENCHMARKS.md)")
    a = ap.parse_args()
    layout = json.load(open(a.layout))
    windows = layout["constructor_kwargs"]["window_size"]
    src = torch.load(a.src, map_location="cpu", weights_only=True)["model"]
    torch.manual_seed(0)
    if a.build_module:
        module = build_module(layout["state_dict"])
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
        if a.build_module and dtype != "int64":
            # load_state_dict: copy into the constructed module's parameter.
            with torch.no_grad():
                module[name].copy_(out[name])
            out[name] = module[name]
    save_file(out, a.out)


def build_module(rows):
    """Every float parameter allocated and initialised as module construction does."""
    params = {}
    with torch.no_grad():
        for name, shape, dtype in rows:
            if dtype == "int64":
                continue
            t = torch.empty(shape)
            if len(shape) >= 2:
                torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # nn.Linear / nn.Conv2d reset_parameters
                if len(shape) == 4:
                    fan_out = shape[0] * shape[2] * shape[3]
                    t.normal_(0, math.sqrt(2.0 / fan_out))  # _init_weights for convs
                else:
                    torch.nn.init.trunc_normal_(t, std=0.02)  # _init_weights for Linear
            elif name.endswith(("running_var", "weight")):
                t.fill_(1.0)
            else:
                t.uniform_(-0.01, 0.01)  # constructor's bias init ...
                t.zero_()  # ... then _init_weights zeros it
            params[name] = t
    return params


if __name__ == "__main__":
    main()
