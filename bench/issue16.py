"""Issue 16's measurements in one run, each beside its baseline, each written into
docs/performance.md between its own markers:

  1. the Rust forward beside PyTorch eager (ViT-CoMer-S seg at 512, 2 threads) and
     `comer-port import` beside the Python pipeline     bench/side_by_side.py
  2. BEiT-comer-L at 896x896 beside PyTorch eager, peak RSS  bench/beit_l_896.py
  3. ONNX Runtime on comer-port's graph beside ONNX Runtime on upstream's
     `torch.onnx.export(dynamo=True)` graph, same weights      bench/onnx_dynamo.py
  4. the graphs' formulations, `--dtype f16` and `--dynamic` beside the fixed-size float32
     GridSample graph in ONNX Runtime                          bench/onnx_bench.py

The ViT-CoMer-S artifact is seeded random weights in the preset's layout
(bench/make_random_artifact.py) unless --artifact is given.

  python bench/issue16.py --python /path/to/venv/bin/python --large /path/to/beitv2_large.pth
      [--artifact s_seg.safetensors] [--quick]

--python needs torch, onnxscript, onnxruntime, safetensors and numpy; the release binary must be
built (CARGO_TARGET_DIR is honoured). --quick runs fewer rounds (a smoke run, not figures).
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "performance.md")
LAYOUT = os.path.join(ROOT, "fixtures", "layouts", "vit-comer-seg_small_ade20k.json")


def step(title, cmd, env):
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="a Python with torch, onnxscript, onnxruntime")
    ap.add_argument("--large", required=True, help="a BEiTv2-L-shaped .pth for the import comparison")
    ap.add_argument("--artifact", help="a ViT-CoMer-S seg artifact (default: random weights)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "comer-port")
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: build it with `cargo build --release` first")
    env = dict(os.environ, COMER_PORT_BIN=binary)
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    artifact = a.artifact or os.path.join(out, "s_seg_random.safetensors")
    if not a.artifact:
        step("random ViT-CoMer-S seg weights", [a.python, "bench/make_random_artifact.py", LAYOUT, artifact], env)
    q = a.quick
    step("forward and import beside PyTorch", [a.python, "bench/side_by_side.py", "--python", a.python, "--binary", binary,
                                               "--large", a.large, "--runs", "1" if q else "5", "--rounds", "1" if q else "5",
                                               "--import-runs", "1" if q else "3"] + (["--no-write"] if q else []), env)
    step("BEiT-comer-L at 896 beside PyTorch", [a.python, "bench/beit_l_896.py", "--python", a.python, "--binary", binary,
                                                "--rounds", "1" if q else "2"] + ([] if q else ["--write", DOC]), env)
    step("ORT: comer-port's graph beside upstream's dynamo graph",
         [a.python, "bench/onnx_dynamo.py", artifact, "--layout", LAYOUT, "--runs", "2" if q else "7"] + ([] if q else ["--write", DOC]), env)
    step("ORT: formulations, f16 and --dynamic",
         [a.python, "bench/onnx_bench.py", artifact, "--runs", "2" if q else "7", "--deform", "deform-conv", "grid-sample", "gather",
          "--dtype", "f32", "f16", "--dynamic"] + ([] if q else ["--write", DOC]), env)


if __name__ == "__main__":
    main()
