"""Compact PyTorch reference of the ViT-CoMer det/seg and BEiT-comer backbones, for benchmarking only.

This is the project's own small re-implementation of what upstream's
`detection|segmentation/.../vit_comer.py` + `comer_modules.py` and the Co-DETR branch's
`beit_comer.py` (`BEiTComer2`: BEiT blocks with relative position bias, windows padded with
zero tokens, modules named injector/extractor/multiconv) compute (eager PyTorch,
pure-PyTorch multi-scale deformable attention through `F.grid_sample`, as upstream's
`ms_deform_attn_core_pytorch`). It reads a state dict with upstream's exact key names, so the
same safetensors file drives this and the Rust forward. `check` proves it against the
project's fixtures before any timing is trusted.

Usage:
  python bench/torch_ref.py check                      # parity with fixtures/forward/{det_tiny,det_tiny_cfi_window,seg_tiny,beit_tiny}
  python bench/torch_ref.py bench --preset-json fixtures/layouts/vit-comer-seg_small_ade20k.json \
      --size 512 --threads 2 --runs 5                   # median eager latency, JSON on stdout
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def layer_norm(x, sd, p, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def linear(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def batch_norm(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"],
                        sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)


def ref_points(shapes):
    out = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w),
                                indexing="ij")
        out.append(torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1))
    return torch.cat(out, 0)[None, :, None]  # (1, Lq, 1, 2)


def ms_deform_attn(sd, p, query, ref, feat, shapes, heads, levels, points):
    b, lq, _ = query.shape
    value = linear(feat, sd, p + ".value_proj")
    dv = value.shape[-1] // heads
    value = value.view(b, -1, heads, dv)
    off = linear(query, sd, p + ".sampling_offsets").view(b, lq, heads, levels, points, 2)
    aw = linear(query, sd, p + ".attention_weights").view(b, lq, heads, levels * points)
    aw = aw.softmax(-1).view(b, lq, heads, levels, points)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    grids = 2 * loc - 1
    sampled = []
    for lid, v in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lid]
        v = v.flatten(2).transpose(1, 2).reshape(b * heads, dv, h, w)
        g = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    aw = aw.transpose(1, 2).reshape(b * heads, 1, lq, levels * points)
    out = (torch.stack(sampled, -2).flatten(-2) * aw).sum(-1).view(b, heads * dv, lq).transpose(1, 2)
    return linear(out, sd, p + ".output_proj")


def split3(c, h, w):
    return c[:, : 4 * h * w], c[:, 4 * h * w: 5 * h * w], c[:, 5 * h * w:]


def to_map(t, h, w):
    b, _, ch = t.shape
    return t.transpose(1, 2).reshape(b, ch, h, w)


def dwconv3(sd, p, x, h, w):
    outs = []
    for t, (hh, ww) in zip(split3(x, h, w), [(2 * h, 2 * w), (h, w), (h // 2, w // 2)]):
        m = to_map(t, hh, ww)
        outs.append(F.conv2d(m, sd[p + ".weight"], sd[p + ".bias"], padding=1, groups=m.shape[1]).flatten(2).transpose(1, 2))
    return torch.cat(outs, 1)


def conv_ffn(sd, p, x, h, w):
    x = linear(x, sd, p + ".fc1")
    x = F.gelu(dwconv3(sd, p + ".dwconv.dwconv", x, h, w))
    return linear(x, sd, p + ".fc2")


def mrfp(sd, p, x, h, w):
    x = linear(x, sd, p + ".fc1")
    c = x.shape[-1]
    outs = []
    for i, (t, (hh, ww)) in enumerate(zip(split3(x, h, w), [(2 * h, 2 * w), (h, w), (h // 2, w // 2)])):
        m = to_map(t, hh, ww)
        a = F.conv2d(m[:, : c // 2], sd[f"{p}.dwconv.dwconv{2 * i + 1}.weight"], sd[f"{p}.dwconv.dwconv{2 * i + 1}.bias"], padding=1, groups=c // 2)
        bb = F.conv2d(m[:, c // 2:], sd[f"{p}.dwconv.dwconv{2 * i + 2}.weight"], sd[f"{p}.dwconv.dwconv{2 * i + 2}.bias"], padding=2, groups=c - c // 2)
        m = F.gelu(batch_norm(torch.cat([a, bb], 1), sd, f"{p}.dwconv.bn{i + 1}"))
        outs.append(m.flatten(2).transpose(1, 2))
    return linear(F.gelu(torch.cat(outs, 1)), sd, p + ".fc2")


def attention(sd, p, x, heads, h, w, window):
    b, n, c = x.shape
    qkv = linear(x, sd, p + ".qkv")
    if window:
        hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
        m = F.pad(qkv.transpose(1, 2).reshape(b, 3 * c, h, w), [0, wp - w, 0, hp - h])
        m = m.reshape(b, 3 * c, hp // window, window, wp // window, window).permute(0, 2, 4, 3, 5, 1)
        t = m.reshape(-1, window * window, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    else:
        t = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = t.unbind(0)
    a = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
    o = (a @ v).transpose(1, 2).reshape(q.shape[0], -1, c)
    if window:
        o = o.reshape(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        o = o.reshape(b, hp, wp, c)[:, :h, :w].reshape(b, n, c)
    return linear(o, sd, p + ".proj")


def rel_index(w):
    """BEiT's relative_position_index of a w x w window (without unilm's cls row/column)."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return (ys[:, None] - ys[None, :] + w - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)


def beit_attention(sd, p, x, heads, h, w, window, table_window):
    """BEiT's attention (q_bias, v_bias, relative position bias), over windows of `window`
    padded with zero tokens at the bottom and right (beit-comer's windowed blocks), or
    globally (then the grid must be the table's window)."""
    b, n, c = x.shape
    win = window or table_window
    bias = torch.cat([sd[p + ".q_bias"], torch.zeros_like(sd[p + ".q_bias"]), sd[p + ".v_bias"]])
    if window:
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        m = F.pad(x.transpose(1, 2).reshape(b, c, h, w), [0, wp - w, 0, hp - h])
        m = m.reshape(b, c, hp // win, win, wp // win, win).permute(0, 2, 4, 3, 5, 1)
        x = m.reshape(-1, win * win, c)
    qkv = F.linear(x, sd[p + ".qkv.weight"], bias)
    t = qkv.reshape(x.shape[0], win * win, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = t.unbind(0)
    table = sd[p + ".relative_position_bias_table"]
    rel = table[rel_index(win).reshape(-1)].reshape(win * win, win * win, -1).permute(2, 0, 1)
    a = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + rel[None]).softmax(-1)
    o = (a @ v).transpose(1, 2).reshape(x.shape[0], -1, c)
    if window:
        o = o.reshape(b, hp // win, wp // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
        o = o.reshape(b, hp, wp, c)[:, :h, :w].reshape(b, n, c)
    return linear(o, sd, p + ".proj")


def block(sd, p, x, cfg, i, h, w, flavor="vit-comer-det"):
    window = cfg["window_size"][i] if cfg["window_attn"][i] else None
    ls = cfg.get("layer_scale", True)
    n = NAMES[flavor]
    y = layer_norm(x, sd, p + ".norm1")
    if flavor == "beit-comer":
        a = beit_attention(sd, p + ".attn", y, cfg["num_heads"], h, w, window, cfg["window_size"][i] or 14)
    else:
        a = attention(sd, p + ".attn", y, cfg["num_heads"], h, w, window)
    x = x + (sd[f"{p}.{n['gamma'][0]}"] * a if ls else a)
    m = linear(F.gelu(linear(layer_norm(x, sd, p + ".norm2"), sd, p + ".mlp.fc1")), sd, p + ".mlp.fc2")
    return x + (sd[f"{p}.{n['gamma'][1]}"] * m if ls else m)


# Module names per flavour (beit-comer: the Co-DETR branch's BEiTComer2).
_COMER = {"tov": "cti_tov", "toc": "cti_toc", "extra": "extra_CTIs", "mrfp": "mrfp", "gamma": ("gamma1", "gamma2")}
NAMES = {
    "vit-comer-det": _COMER,
    "vit-comer-seg": _COMER,
    "beit-comer": {"tov": "injector", "toc": "extractor", "extra": "extra_extractors", "mrfp": "multiconv",
                   "gamma": ("gamma_1", "gamma_2")},
}


def extractor(sd, p, query, feat, h, w, cfg, cfi, ffn):
    """CTI_toC (ffn=False for seg's) and Extractor_CTI (ffn=True)."""
    x1, x2, x3 = split3(query, h, w)
    query = torch.cat([x1, x2 + feat, x3], 1)
    if ffn and cfg["with_cffn"]:
        query = query + conv_ffn(sd, p + ".ffn", layer_norm(query, sd, p + ".ffn_norm"), h, w)
    if cfi:
        shapes = [(2 * h, 2 * w), (h, w), (h // 2, w // 2)]
        q = layer_norm(query, sd, p + ".query_norm")
        f = layer_norm(query, sd, p + ".feat_norm")
        cp = p + ".cfinter"
        a = ms_deform_attn(sd, cp + ".attn", layer_norm(q, sd, cp + ".query_norm"), ref_points(shapes),
                           layer_norm(f, sd, cp + ".feat_norm"), shapes, cfg["deform_num_heads"], 3, cfg["n_points"])
        query = q + a
        if cfg["with_cffn"]:
            query = query + conv_ffn(sd, cp + ".ffn", layer_norm(query, sd, cp + ".ffn_norm"), h, w)
    return query


def forward(sd, cfg, flavor, img):
    """f1..f4 (and, for beit-comer, the ViT map x as a fifth output)."""
    b, _, ih, iw = img.shape
    h, w = ih // 16, iw // 16
    n_int = len(cfg["interaction_indexes"])
    lst = lambda k, d: cfg.get(k, d) if isinstance(cfg.get(k, d), list) else [cfg.get(k, d)] * n_int
    beit = flavor == "beit-comer"
    tov = lst("use_injector" if beit else "use_CTI_toV", True)
    toc = lst("use_extractor" if beit else "use_CTI_toC", True)
    cfi = lst("cnn_feature_interaction", flavor == "vit-comer-seg")
    # Spatial prior module.
    x = img
    for i in (0, 3, 6):
        x = F.relu(batch_norm(F.conv2d(x, sd[f"spm.stem.{i}.weight"], stride=2 if i == 0 else 1, padding=1), sd, f"spm.stem.{i + 1}"))
    c1 = F.max_pool2d(x, 3, 2, 1)
    c2 = F.relu(batch_norm(F.conv2d(c1, sd["spm.conv2.0.weight"], stride=2, padding=1), sd, "spm.conv2.1"))
    c3 = F.relu(batch_norm(F.conv2d(c2, sd["spm.conv3.0.weight"], stride=2, padding=1), sd, "spm.conv3.1"))
    c4 = F.relu(batch_norm(F.conv2d(c3, sd["spm.conv4.0.weight"], stride=2, padding=1), sd, "spm.conv4.1"))
    c1, c2, c3, c4 = [F.conv2d(t, sd[f"spm.fc{k}.weight"], sd[f"spm.fc{k}.bias"]) for k, t in enumerate((c1, c2, c3, c4), 1)]
    c = torch.cat([t.flatten(2).transpose(1, 2) + sd["level_embed"][k] for k, t in enumerate((c2, c3, c4))], 1)
    # Patch embedding + resized position embedding (beit-comer has none).
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    if "pos_embed" in sd:
        g = cfg.get("pretrain_size", 224) // 16
        pos = sd["pos_embed"][:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        x = x + F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    nm = NAMES[flavor]
    shapes3 = [(2 * h, 2 * w), (h, w), (h // 2, w // 2)]
    outs = []
    for i, (s, e) in enumerate(cfg["interaction_indexes"]):
        p = f"interactions.{i}"
        if tov[i]:
            c = mrfp(sd, f"{p}.{nm['mrfp']}", c, h, w)
            a1, a2, a3 = split3(c, h, w)
            c = torch.cat([a1, a2 + x, a3], 1)
            tp = f"{p}.{nm['tov']}"
            c1_ = ms_deform_attn(sd, tp + ".attn", layer_norm(c, sd, tp + ".query_norm"), ref_points(shapes3),
                                 layer_norm(c, sd, tp + ".feat_norm"), shapes3, cfg["deform_num_heads"], 3, cfg["n_points"])
            c1_ = c1_ + conv_ffn(sd, tp + ".ffn", layer_norm(c1_, sd, tp + ".ffn_norm"), h, w)
            s1, s2, s3 = split3(c1_, h, w)
            s1 = F.interpolate(to_map(s1, 2 * h, 2 * w), scale_factor=0.5, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
            s3 = F.interpolate(to_map(s3, h // 2, w // 2), scale_factor=2, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
            x = x + sd[tp + ".gamma"] * (s1 + s2 + s3)
        for k in range(s, e + 1):
            x = block(sd, f"blocks.{k}", x, cfg, k, h, w, flavor)
        if toc[i]:
            c = extractor(sd, f"{p}.{nm['toc']}", c, x, h, w, cfg, cfi[i], ffn=False)
        if i == n_int - 1 and cfg.get("use_extra_extractor" if beit else "use_extra_CTI", True):
            extra = f"{p}.{nm['extra']}"
            for j in range(len({k.split(".")[3] for k in sd if k.startswith(extra + ".")})):
                c = extractor(sd, f"{extra}.{j}", c, x, h, w, cfg, cfi[i], ffn=True)
        outs.append(to_map(x, h, w))
    c2, c3, c4 = split3(c, h, w)
    c2, c3, c4 = to_map(c2, 2 * h, 2 * w), to_map(c3, h, w), to_map(c4, h // 2, w // 2)
    c1 = F.conv_transpose2d(c2, sd["up.weight"], sd["up.bias"], stride=2) + c1
    if cfg.get("add_vit_feature", True):
        v1, v2, v3, v4 = outs if flavor == "vit-comer-seg" else [outs[-1]] * 4
        c1 = c1 + F.interpolate(v1, scale_factor=4, mode="bilinear", align_corners=False)
        c2 = c2 + F.interpolate(v2, scale_factor=2, mode="bilinear", align_corners=False)
        c3 = c3 + v3
        c4 = c4 + F.interpolate(v4, scale_factor=0.5, mode="bilinear", align_corners=False)
    out = [batch_norm(t, sd, f"norm{k}") for k, t in enumerate((c1, c2, c3, c4), 1)]
    if flavor == "beit-comer":
        out.append(to_map(x, h, w) if cfg.get("add_vit_feature", True) else x)
    return out


def full_cfg(kwargs):
    cfg = {"with_cffn": True, "n_points": 4, "deform_num_heads": 6, "pretrain_size": 224}
    cfg.update(kwargs)
    depth = cfg["depth"]
    for k, d in (("window_attn", False), ("window_size", 14)):
        if not isinstance(cfg.get(k, d), list):
            cfg[k] = [cfg.get(k, d)] * depth
    return cfg


def check(root):
    from safetensors.torch import load_file
    worst = 0.0
    for case in ("det_tiny", "det_tiny_cfi_window", "seg_tiny", "beit_tiny"):
        d = f"{root}/fixtures/forward/{case}"
        meta = json.load(open(f"{d}/case.json"))
        sd, inputs, exp = load_file(f"{d}/weights.safetensors"), load_file(f"{d}/inputs.safetensors"), load_file(f"{d}/expected.safetensors")
        cfg = full_cfg(meta["constructor_kwargs"])
        with torch.no_grad():
            for name, img in inputs.items():
                for k, f in enumerate(forward(sd, cfg, meta["flavor"], img), 1):
                    e = exp[f"{name}.out.f{k}" if k <= 4 else f"{name}.out.x"]
                    err = ((f - e).abs().max() / max(1.0, e.abs().max().item())).item()
                    worst = max(worst, err)
                    print(f"{case} {name} f{k}: rel err {err:.2e}")
    print(f"worst {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


def random_state(layout, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape, dtype in layout:
        if dtype == "int64":
            sd[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[name] = torch.randn(shape, generator=g) * 0.02
    return sd


def bench(args):
    torch.set_num_threads(args.threads)
    meta = json.load(open(args.preset_json))
    cfg = full_cfg(meta["constructor_kwargs"])
    sd = random_state(meta["state_dict"], 0)
    img = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    times = []
    with torch.no_grad():
        forward(sd, cfg, meta["flavor"], img)  # warm-up
        for _ in range(args.runs):
            t = time.perf_counter()
            forward(sd, cfg, meta["flavor"], img)
            times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"runner": "pytorch-eager", "torch": torch.__version__, "threads": args.threads,
                      "size": args.size, "runs": times, "median_s": statistics.median(times),
                      "peak_rss_bytes": rss}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--root", default=".")
    b = sub.add_parser("bench")
    b.add_argument("--preset-json", required=True)
    b.add_argument("--size", type=int, default=512)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "check":
        sys.exit(check(a.root))
    bench(a)


if __name__ == "__main__":
    main()
