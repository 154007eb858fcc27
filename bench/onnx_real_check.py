"""Export a (real-sized) artifact to ONNX, run it in ONNX Runtime and compare with the Rust forward.

Writes a seeded NCHW image batch, runs `comer-port export onnx` (timed, peak RSS via wait4),
loads the graph in ONNX Runtime (CPU), runs it once, runs `comer-port run` on the same
batch and prints, per output, max|ort - rust| / max(1, max|rust|). Also prints the file
sizes beside the artifact's parameter bytes (the issue-16 compactness figure).

With --dynamic the graph is exported once with `--dynamic` and checked at every --size given
(`[B x]H x W`, e.g. --size 512x512 --size 2x640x480 --size 1024x768).

Usage: python bench/onnx_real_check.py ARTIFACT --size 512x512 [--size ...] [--dynamic]
       [--bin target/release/comer-port] [--threads 2] [--keep DIR] [--dtype f32|f16]
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
    ap.add_argument("--size", action="append", help="[B x]H x W; repeatable with --dynamic")
    ap.add_argument("--dynamic", action="store_true")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "comer-port"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep")
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    sizes = a.size or ["512x512"]
    if len(sizes) > 1 and not a.dynamic:
        raise SystemExit("several --size need --dynamic")
    shapes = []
    for s in sizes:
        v = [int(x) for x in s.split("x")]
        shapes.append(tuple(v) if len(v) == 3 else (1, *v))
    d = a.keep or tempfile.mkdtemp(prefix="onnx-real-")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = {f"image{i}": rng.standard_normal((b, 3, h, w)).astype(np.float32) for i, (b, h, w) in enumerate(shapes)}
    inp = os.path.join(d, "input.safetensors")
    save_file(imgs, inp)
    model = os.path.join(d, "model.onnx")
    for f in (model, model + ".data"):
        if os.path.exists(f):
            os.remove(f)
    b0, h0, w0 = shapes[0]
    size = ["--dynamic"] if a.dynamic else ["--input-size", f"{h0}x{w0}", "--batch", str(b0)]
    t, rss = timed([a.bin, "export", "onnx", a.artifact, *size, "-o", model, "--quiet", "--dtype", a.dtype])
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
    print(f"ORT: session {t_load:.1f} s ({a.threads} threads)")
    got = {}
    for name, img in imgs.items():
        t0 = time.perf_counter()
        got[name] = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": img})))
        print(f"ORT {name} {img.shape}: one run {time.perf_counter() - t0:.1f} s")
    out = os.path.join(d, "rust.safetensors")
    if os.path.exists(out):
        os.remove(out)
    t, rss = timed([a.bin, "run", "--weights", a.artifact, "--input", inp, "-o", out, "--quiet"])
    print(f"comer-port run: {t:.2f} s, peak RSS {rss:.0f} MB")
    ref = load_file(out)
    for name in imgs:
        for k in sorted(got[name]):
            r = ref[f"{name}.out.{k}"]
            err = float(np.abs(got[name][k] - r).max()) / max(1.0, float(np.abs(r).max()))
            print(f"{name} {k} {tuple(r.shape)}: max|ort - rust| / max(1, max|rust|) = {err:.2e}")


if __name__ == "__main__":
    main()
