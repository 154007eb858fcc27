"""Issue 16's ONNX baseline: ONNX Runtime on comer-port's exported graph beside ONNX Runtime on
the graph `torch.onnx.export(..., dynamo=True)` makes of the same model with the same weights.

The PyTorch model is `bench/torch_ref.py` (the project's own eager ViT-CoMer, proven against the
forward fixtures by `torch_ref.py check`), its parameters the artifact's tensors. Both graphs run
in ONNX Runtime (CPU, intra_op THREADS, inter_op 1, sequential) on one seeded image: one
warm-up each, then RUNS rounds alternating the two; the medians, their ratio, and the largest
difference between the two graphs' outputs (relative to max |output|) are printed, and with
--write the table goes between this script's markers in that file.

  python bench/onnx_dynamo.py ARTIFACT --layout fixtures/layouts/vit-comer-seg_small_ade20k.json \
      [--size 512] [--runs 7] [--threads 2] [--deform deform-conv grid-sample] [--write docs/performance.md]

comer-port's graph is exported once per `--deform` formulation (the first is the default,
`deform-conv`; `grid-sample` is upstream's own formulation) and all run in the same rounds.

Needs torch, onnxscript (the dynamo exporter), onnxruntime, safetensors, numpy.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import torch_ref  # noqa: E402
from doc_section import commit, publish, utc_now  # noqa: E402

BIN = os.environ.get("COMER_PORT_BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "comer-port"))
BEGIN = "<!-- onnx-dynamo:begin (bench/onnx_dynamo.py writes this section) -->"
END = "<!-- onnx-dynamo:end -->"


class Ref(torch.nn.Module):
    """torch_ref's functional forward with the artifact's tensors as buffers (initializers)."""

    def __init__(self, sd, cfg, flavor):
        super().__init__()
        self.names = []
        for i, (k, v) in enumerate(sd.items()):
            self.register_buffer(f"t{i}", v)
            self.names.append(k)
        self.cfg, self.flavor = cfg, flavor

    def forward(self, img):
        sd = {k: getattr(self, f"t{i}") for i, k in enumerate(self.names)}
        return tuple(torch_ref.forward(sd, self.cfg, self.flavor, img))


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--layout", required=True, help="fixtures/layouts/*.json of the artifact's preset (flavour, kwargs)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--deform", nargs="+", default=["deform-conv", "grid-sample"])
    ap.add_argument("--write")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    meta = json.load(open(a.layout))
    cfg, flavor = torch_ref.full_cfg(meta["constructor_kwargs"]), meta["flavor"]
    sd = {k: v for k, v in load_file(a.artifact).items() if v.is_floating_point()}
    img = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, a.size, a.size), dtype=np.float32))

    dyn = os.path.join(a.out, f"dynamo-{a.size}.onnx")
    t = time.perf_counter()
    with torch.no_grad():
        prog = torch.onnx.export(Ref(sd, cfg, flavor).eval(), (img,), dynamo=True, input_names=["image"])
    prog.save(dyn)
    print(f"dynamo export: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    paths = {"dynamo": dyn}
    for deform in a.deform:
        ours = os.path.join(a.out, f"comer-port-{deform}-{a.size}.onnx")
        t = time.perf_counter()
        subprocess.run([BIN, "export", "onnx", a.artifact, "-o", ours, "--input-size", f"{a.size}x{a.size}",
                        "--deform", deform, "--force"], check=True, stdout=subprocess.DEVNULL)
        print(f"comer-port export ({deform}): {time.perf_counter() - t:.1f} s", file=sys.stderr)
        paths[deform] = ours

    sessions = {k: session(p, a.threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: img.numpy()} for k, s in sessions.items()}
    outs = {k: s.run(None, feeds[k]) for k, s in sessions.items()}  # warm-up
    diff = {d: max(float(np.abs(p - q).max()) / max(1.0, float(np.abs(q).max()))
                   for p, q in zip(outs[d][:4], outs["dynamo"][:4])) for d in a.deform}
    times = {k: [] for k in sessions}
    for _ in range(a.runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = "".join(
        f"| `comer-port export onnx --deform {d}`{' (default)' if i == 0 else ''} | {med[d]:.3f} s | {min(times[d]):.3f} s | "
        f"{med['dynamo'] / med[d]:.2f}× faster | {diff[d]:.1e} |\n" for i, d in enumerate(a.deform))
    for d in a.deform:
        print(f"{d}: median {med[d]:.3f} s, dynamo {med['dynamo']:.3f} s, ratio {med['dynamo'] / med[d]:.3f}", file=sys.stderr)
    text = (
        f"{meta['flavor']} ({os.path.basename(a.layout)}) at {a.size}×{a.size}, the artifact `{os.path.basename(a.artifact)}`'s "
        f"weights in every graph, ONNX Runtime {ort.__version__} CPU, {a.threads} intra-op threads, median of {a.runs} "
        f"alternated runs after one warm-up each, torch {torch.__version__}, "
        f"{utc_now()}, commit {commit()}, `python bench/onnx_dynamo.py`:\n\n"
        "| graph | ORT median | min | ratio | f1–f4 against the dynamo graph's (of max \\|output\\|) |\n|---|---|---|---|---|\n"
        f"| `torch.onnx.export(dynamo=True)` of `bench/torch_ref.py` | {med['dynamo']:.3f} s | {min(times['dynamo']):.3f} s | 1.00× | |\n"
        + rows
    )
    publish(text, a.write, BEGIN, END)


if __name__ == "__main__":
    main()
