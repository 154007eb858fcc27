#!/usr/bin/env python3
"""Every preset imported from a real-shaped checkpoint of its family, with the default
verification beside `--no-verify`: wall time (median of alternated runs) and peak RSS of the
child process (wait4), the verdict and whether mapping parity ran.

The checkpoints come from `bench/make_real_shaped.py` (real dimensions, written by timm /
transformers / torch.save in the unilm and DINOv2 layouts). No Python package is needed here.

    python3 bench/make_real_shaped.py /work/real            # once, in a venv with torch
    cargo build --release
    python3 bench/real_presets.py [--real /work/real] [--runs 3] [--only NAME ...] [--write docs/performance.md]

Writes a markdown table to stdout, and with --write between the `real-presets:begin/end`
markers of that file.
"""
import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (name, source file under --real, preset, extra import flags)
CASES = [
    ("DeiT-T", "deit_tiny_patch16_224.pth", "vit-comer-t-seg", []),
    ("DeiT-S", "deit_small_patch16_224.pth", "vit-comer-s-seg", []),
    ("HF ViT-B (in21k)", "hf-vit-base-patch16-224-in21k", "vit-comer-b-seg", []),
    ("AugReg B/16", "augreg_B_16-i21k-300ep.npz", "vit-comer-b-seg", []),
    ("DINOv2-S/14", "dinov2_vits14_pretrain.pth", "vit-comer-s-det-dinov2", []),
    ("DINOv2-S/14 pinv", "dinov2_vits14_pretrain.pth", "vit-comer-s-det-dinov2", ["--patch-resize", "pinv"]),
    ("DINOv2-B/14", "dinov2_vitb14_pretrain.pth", "vit-comer-b-det-dinov2", []),
    ("BEiTv2-L (unilm)", "beitv2_large_patch16_224_pt1k_ft21kto1k.pth", "beit-comer-l-codetr", []),
    # No preset has ViT-g's dimensions: the flavour with the source's own (issue 13's 4 GB case;
    # `make_real_shaped.py --only vit_giant14`).
    ("ViT-g/14 (timm)", "vit_giant_patch14_224.pth", None, ["--flavor", "vit-comer-det"]),
]


def binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return os.environ.get("COMER_PORT", str(pathlib.Path(target) / "release" / "comer-port"))


def run(cmd):
    """Wall seconds and peak RSS of `cmd`, reaped with wait4 so the RSS is this child's own."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, code, out.decode(), err.decode()


def one_case(name, src, preset, extra, runs, work):
    target = ["--preset", preset] if preset else []
    cmd = lambda out, verify: [binary(), "import", str(src), *target, "-o", str(out), "--quiet", *extra] + (
        [] if verify else ["--no-verify"]
    )
    bare, full = [], []
    verdict, parity = None, None
    for i in range(runs):
        for verify in (False, True):
            out = work / f"{i}-{int(verify)}.safetensors"
            wall, rss, code, stdout, stderr = run(cmd(out, verify))
            if code != 0:
                sys.exit(f"{name}: exit {code}\n{stdout}\n{stderr}")
            (full if verify else bare).append((wall, rss))
            if verify:
                verdict = next((l[len("verdict"):].strip() for l in stdout.splitlines() if l.startswith("verdict")), "?")
                rows = [l for l in stdout.splitlines() if l.startswith("mapping parity")]
                ran = [l.split()[-1] for l in rows if l.split()[-1] in ("exact", "approximation")]
                parity = f"{len(ran)} of {len(rows)} ran ({', '.join(sorted(set(ran)))})" if rows else "none"
            for f in work.iterdir():
                f.unlink()
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    return {
        "name": name, "preset": preset, "flags": " ".join(extra),
        "bare_s": med(bare, 0), "bare_rss": max(x[1] for x in bare),
        "full_s": med(full, 0), "full_rss": max(x[1] for x in full),
        "verdict": verdict, "parity": parity,
    }


def table(rows, runs):
    head = (
        f"Median of {runs} alternated runs each (`import --no-verify` and `import` with its default verification), "
        f"peak RSS of the child (wait4), {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
        f"`python3 bench/real_presets.py`:\n\n"
        "| source | preset | `--no-verify` | verified | ratio | verdict | mapping parity |\n|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['name']} | {' '.join(x for x in (r['preset'], r['flags']) if x)} | {r['bare_s']:.2f} s, {r['bare_rss'] / 1e6:.0f} MB "
        f"| {r['full_s']:.2f} s, {r['full_rss'] / 1e6:.0f} MB | {r['full_s'] / r['bare_s']:.1f}× | {r['verdict']} | {r['parity']} |\n"
        for r in rows
    )
    return head + body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", default="/work/real")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--write")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, file, preset, extra in CASES:
            if a.only and name not in a.only:
                continue
            src = pathlib.Path(a.real) / file
            if not src.exists():
                print(f"skip {name}: {src} missing (bench/make_real_shaped.py)", file=sys.stderr)
                continue
            r = one_case(name, src, preset, extra, a.runs, pathlib.Path(d))
            print(json.dumps(r), file=sys.stderr)
            rows.append(r)
    text = table(rows, a.runs)
    print(text)
    if a.write:
        p = pathlib.Path(a.write)
        doc = p.read_text()
        begin, end = "<!-- real-presets:begin -->", "<!-- real-presets:end -->"
        if begin in doc:
            doc = doc[: doc.index(begin)] + begin + "\n" + text + end + doc[doc.index(end) + len(end):]
        else:
            doc += f"\n{begin}\n{text}{end}\n"
        p.write_text(doc)


if __name__ == "__main__":
    main()
