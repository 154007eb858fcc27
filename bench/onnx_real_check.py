"""Export a (real-sized) artifact to ONNX, run it in ONNX Runtime and compare with the Rust forward.

Writes a seeded NCHW image batch, runs `comer-port export onnx` (timed, peak RSS via wait4),
loads the graph in ONNX Runtime (CPU), runs it once, runs `comer-port run` on the same
batch and prints, per output, max|ort - rust| / max(1, max|rust|). Also prints the file
sizes beside the artifact's parameter bytes (the issue-16 compactness figure).

Usage: python bench/onnx_real_check.py ARTIFACT --size 512x512 [--bin target/release/comer-port]
       [--threads 2] [--keep DIR] [--dtype f32|f16]
"""
import argparse
import os
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file, save_file


def timed(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return time.perf_counter() - t0, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "comer-port"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep")
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    d = a.keep or tempfile.mkdtemp(prefix="onnx-real-")
    os.makedirs(d, exist_ok=True)
    img = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    inp = os.path.join(d, "input.safetensors")
    save_file({"image": img}, inp)
    model = os.path.join(d, "model.onnx")
    for f in (model, model + ".data"):
        if os.path.exists(f):
            os.remove(f)
    t, rss = timed([a.bin, "export", "onnx", a.artifact, "--input-size", a.size, "-o", model, "--quiet", "--dtype", a.dtype])
    sizes = {f: os.path.getsize(f) for f in (model, model + ".data") if os.path.exists(f)}
    params = sum(v.nbytes for v in load_file(a.artifact).values() if v.dtype == np.float32)
    if a.dtype == "f16":
        params //= 2
    print(f"export: {t:.2f} s, peak RSS {rss:.0f} MB; files {sizes}; total {sum(sizes.values()) / 1e9:.3f} GB"
          f" = {sum(sizes.values()) / params:.3f} x the artifact's parameter bytes at {a.dtype} ({params / 1e9:.3f} GB)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": img})))
    t_run = time.perf_counter() - t0
    print(f"ORT: session {t_load:.1f} s, one run {t_run:.1f} s ({a.threads} threads)")
    out = os.path.join(d, "rust.safetensors")
    if os.path.exists(out):
        os.remove(out)
    t, rss = timed([a.bin, "run", "--weights", a.artifact, "--input", inp, "-o", out, "--quiet"])
    print(f"comer-port run: {t:.2f} s, peak RSS {rss:.0f} MB")
    ref = load_file(out)
    for k in sorted(got):
        r = ref[f"image.out.{k}"]
        err = float(np.abs(got[k] - r).max()) / max(1.0, float(np.abs(r).max()))
        print(f"{k} {tuple(r.shape)}: max|ort - rust| / max(1, max|rust|) = {err:.2e}")


if __name__ == "__main__":
    main()
