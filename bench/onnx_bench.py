"""ONNX Runtime CPU latency of an exported backbone: DeformConv, GridSample and Gather deformable sampling,
float32 vs `--dtype f16` graphs.

Usage: onnx_bench.py ARTIFACT --preset NAME [--size 512x512] [--runs 5] [--threads 2]
       [--deform deform-conv grid-sample gather] [--dtype f32 f16] [--dynamic] [--write docs/performance.md]
Exports every (formulation, dtype) with target/release/comer-port into bench/out/, then runs each in
ONNX Runtime (CPU, intra_op_num_threads=THREADS, inter_op 1, sequential) on one random image:
one warm-up run each, then RUNS rounds that alternate the formulations (so load changes on a
shared machine hit both alike); prints median/min per formulation and their ratio.
With --dynamic, each formulation is also exported with `--dynamic` (symbolic batch, height and
width) and run on the same image beside its fixed-size graph; their outputs are compared, and
with --write the table goes between this script's markers in that file.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from doc_section import commit, publish, utc_now  # noqa: E402
BEGIN = "<!-- onnx-bench:begin (bench/onnx_bench.py writes this section) -->"
END = "<!-- onnx-bench:end -->"
BIN = os.environ.get("COMER_PORT_BIN", os.path.join(ROOT, "target", "release", "comer-port"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--preset")
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deform", nargs="+", default=["deform-conv", "grid-sample", "gather"])
    ap.add_argument("--dtype", nargs="+", default=["f32"])
    ap.add_argument("--dynamic", action="store_true", help="also time each graph exported with --dynamic")
    ap.add_argument("--write", help="markdown file to write the table into")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    img = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    results = {}
    outputs = {}
    sessions = {}
    shapes = [False, True] if a.dynamic else [False]
    for deform, dtype, dyn in [(d, t, y) for d in a.deform for t in a.dtype for y in shapes]:
        size = "dynamic" if dyn else a.size
        out = os.path.join(ROOT, "bench", "out", f"model-{deform}-{dtype}-{size}.onnx")
        cmd = [BIN, "export", "onnx", a.artifact, "-o", out, "--deform", deform, "--dtype", dtype, "--force"]
        cmd += ["--dynamic"] if dyn else ["--input-size", a.size]
        deform = deform if dtype == "f32" else f"{deform} {dtype}"
        deform = f"{deform} dynamic" if dyn else deform
        if a.preset:
            cmd += ["--preset", a.preset]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"export {deform}: {time.perf_counter() - t0:.2f} s, {os.path.getsize(out) / 1e6:.1f} MB")
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[deform] = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
        outputs[deform] = sessions[deform].run(None, {"image": img})  # warm-up
        results[deform] = []
    for _ in range(a.runs):
        for deform, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, {"image": img})
            results[deform].append(time.perf_counter() - t0)
    for deform, times in results.items():
        print(f"{deform}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, runs {[round(t, 3) for t in times]}")
    for k in list(outputs):
        if k.endswith(" dynamic") and k[:-8] in outputs:
            ref = outputs[k[:-8]]
            rel = max(float(np.abs(p - q).max()) / max(1.0, float(np.abs(q).max())) for p, q in zip(outputs[k], ref))
            print(f"{k}: max |dynamic - fixed| / max(1, max |fixed|) over outputs: {rel:.3e}; "
                  f"time dynamic / fixed: {statistics.median(results[k]) / statistics.median(results[k[:-8]]):.3f}")
        if k.endswith(" f16") and k[:-4] in outputs:
            ref = outputs[k[:-4]]
            rel = max(float(np.abs(p - q).max()) / max(1.0, float(np.abs(q).max())) for p, q in zip(outputs[k], ref))
            print(f"{k}: max |f16 - f32| / max(1, max |f32|) over outputs: {rel:.3e}; "
                  f"time f16 / f32: {statistics.median(results[k]) / statistics.median(results[k[:-4]]):.3f}")
    if "grid-sample" in outputs and "gather" in outputs:
        x, y = outputs["grid-sample"], outputs["gather"]
        diff = max(float(np.abs(p - q).max()) for p, q in zip(x, y))
        print(f"max |grid-sample - gather| over outputs: {diff:.3e}")
        gs, ga = (statistics.median(results[k]) for k in ("grid-sample", "gather"))
        print(f"gather / grid-sample median ratio: {ga / gs:.3f}")
    print(f"ort {ort.__version__}, threads {a.threads}, image {h}x{w}")
    if a.write:
        base = {k: statistics.median(v) for k, v in results.items()}
        rows = ["| graph | ORT median | min | against the first graph | max \\|out − first\\| / max(1, max \\|first\\|) |",
                "|---|---|---|---|---|"]
        first = next(iter(results))
        for k, times in results.items():
            rel = max(float(np.abs(p - q).max()) / max(1.0, float(np.abs(q).max())) for p, q in zip(outputs[k], outputs[first]))
            rows.append(f"| {k} | {base[k]:.3f} s | {min(times):.3f} s | {base[k] / base[first]:.3f}× | {rel:.1e} |")
        head = (f"`{os.path.basename(a.artifact)}` at {h}×{w}, ONNX Runtime {ort.__version__} CPU, {a.threads} intra-op "
                f"threads, median of {a.runs} alternated runs after one warm-up each, {utc_now()}, commit {commit()}, "
                f"`python bench/onnx_bench.py {os.path.basename(a.artifact)} --size {a.size} --runs {a.runs} "
                f"--deform {' '.join(a.deform)} --dtype {' '.join(a.dtype)}{' --dynamic' if a.dynamic else ''}`:\n\n")
        publish(head + "\n".join(rows) + "\n", a.write, BEGIN, END)


if __name__ == "__main__":
    main()
