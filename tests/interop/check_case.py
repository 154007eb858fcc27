"""Export one fixture case with comer-port and compare ONNX Runtime against expected outputs.

Usage: check_case.py CASE_DIR [--deform gather|grid-sample] [--bin PATH]
Shared by test_onnx.py and by hand for debugging.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("COMER_PORT_BIN", os.path.join(ROOT, "target", "release", "comer-port"))


# max|got - exp| / max(1, max|exp|) allowed: float32 graphs, and `--dtype f16` graphs (float16
# weights and activations: eps 9.8e-4; measured on every case and deform 4.7e-4 .. 1.4e-3).
TOL = {"f32": 1e-4, "f16": 5e-3}


def export(case_dir, name, shape, out, deform="gather", dtype="f32"):
    n, _, h, w = shape
    cmd = [BIN, "export", "onnx", os.path.join(case_dir, "weights.safetensors"), "-o", out,
           "--input-size", f"{h}x{w}", "--batch", str(n),
           "--config", os.path.join(case_dir, "case.json"), "--deform", deform, "--dtype", dtype, "--force"]
    subprocess.run(cmd, check=True, capture_output=True)


def compare(case_dir, deform="gather", tmp=None, dtype="f32"):
    """Yields (input name, output name, max abs err, tolerance)."""
    case = json.load(open(os.path.join(case_dir, "case.json")))
    inputs = load_file(os.path.join(case_dir, "inputs.safetensors"))
    expected = load_file(os.path.join(case_dir, "expected.safetensors"))
    tmp = tmp or tempfile.mkdtemp()
    for name in sorted(inputs):
        img = inputs[name]
        out = os.path.join(tmp, f"{os.path.basename(case_dir)}_{name}_{deform}_{dtype}.onnx")
        export(case_dir, name, img.shape, out, deform, dtype)
        onnx.checker.check_model(out, full_check=True)
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, {"image": img})))
        keys = ["f1", "f2", "f3", "f4"] + (["x"] if case["flavor"] == "beit-comer" else [])
        for k in keys:
            exp = expected[f"{name}.out.{k}"]
            g = got[k]
            assert g.shape == exp.shape, (name, k, g.shape, exp.shape)
            assert g.dtype == np.float32, (name, k, g.dtype)
            err = float(np.abs(g - exp).max())
            tol = TOL[dtype] * max(1.0, float(np.abs(exp).max()))
            yield name, k, err, tol


if __name__ == "__main__":
    case_dir = sys.argv[1]
    deform = sys.argv[sys.argv.index("--deform") + 1] if "--deform" in sys.argv else "gather"
    ok = True
    for name, k, err, tol in compare(case_dir, deform):
        flag = "ok" if err <= tol else "FAIL"
        ok &= err <= tol
        print(f"{os.path.basename(case_dir)} {name} {k}: max|got-exp| = {err:.3e} (tol {tol:.3e}) {flag}")
    sys.exit(0 if ok else 1)
