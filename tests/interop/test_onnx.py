"""ONNX Runtime parity of `comer-port export onnx` on every fixtures/forward case.

For each case and input: export with the case's config and weights, `onnx.checker` passes,
and ONNX Runtime CPU reproduces upstream's f1..f4 (and x for beit-comer) within
max|got - exp| <= 1e-4 * max(1, max|exp|) (5e-3 for `--dtype f16` graphs). All three
deformable-attention formulations are run. `--dynamic` graphs are checked at every fixture
input and at three more sizes (one of batch 2) against the Rust forward.
"""
import glob
import json
import os
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from check_case import BIN, ROOT, TOL, compare

CASES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "forward", "*")))


@pytest.mark.parametrize("deform", ["gather", "grid-sample", "deform-conv"])
@pytest.mark.parametrize("case_dir", CASES, ids=[os.path.basename(c) for c in CASES])
def test_forward_case(case_dir, deform, tmp_path):
    rows = list(compare(case_dir, deform, str(tmp_path)))
    assert rows, "no outputs compared"
    for name, key, err, tol in rows:
        print(f"{os.path.basename(case_dir)} {deform} {name} {key}: {err:.3e} (tol {tol:.3e})")
    bad = [(n, k, e, t) for n, k, e, t in rows if not e <= t]
    assert not bad, f"outputs outside tolerance: {bad}"


@pytest.mark.parametrize("deform", ["gather", "grid-sample", "deform-conv"])
@pytest.mark.parametrize("case_dir", CASES, ids=[os.path.basename(c) for c in CASES])
def test_forward_case_f16(case_dir, deform, tmp_path):
    """`--dtype f16`: float16 weights and activations, LayerNorm/softmax/BatchNorm/sampling in
    float32, float32 input and outputs; within the stated f16 bound of upstream's outputs."""
    rows = list(compare(case_dir, deform, str(tmp_path), dtype="f16"))
    assert rows, "no outputs compared"
    for name, key, err, tol in rows:
        print(f"{os.path.basename(case_dir)} f16 {deform} {name} {key}: {err:.3e} (tol {tol:.3e})")
    bad = [(n, k, e, t) for n, k, e, t in rows if not e <= t]
    assert not bad, f"outputs outside tolerance: {bad}"
    # The weights really are float16 (a float32 graph would pass the bound too).
    model = onnx.load(glob.glob(os.path.join(str(tmp_path), "*_f16.onnx"))[0])
    kinds = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds, kinds


def test_cases_present():
    assert len(CASES) >= 4


# `--dynamic`: one graph for every batch and size, checked where upstream's outputs are known
# (each fixture input) and against the Rust forward (`comer-port run`) at three more sizes,
# one of them batch 2 and one whose grid leaves windows padded.
DYNAMIC_SIZES = [(1, 64, 64), (2, 96, 128), (1, 128, 224)]


def dynamic_case(case_dir, tmp):
    """(weights, config) of a case for a dynamic export. beit_tiny's global-attention
    blocks (a 4x4 relative-position table, which fixes the grid) become windowed blocks over
    the same tables, so the BEiT layout is covered at every size too."""
    weights = os.path.join(case_dir, "weights.safetensors")
    config = os.path.join(case_dir, "case.json")
    case = json.load(open(config))
    if case["flavor"] == "beit-comer":
        kw = case["constructor_kwargs"]
        kw["window_attn"] = [True] * len(kw["window_attn"])
        config = os.path.join(tmp, "case_windowed.json")
        json.dump(case, open(config, "w"))
    return weights, config, case


@pytest.mark.parametrize("deform", ["gather", "grid-sample", "deform-conv"])
@pytest.mark.parametrize("case_dir", CASES, ids=[os.path.basename(c) for c in CASES])
def test_dynamic_graph_at_every_size(case_dir, deform, tmp_path):
    tmp = str(tmp_path)
    weights, config, case = dynamic_case(case_dir, tmp)
    out = os.path.join(tmp, "dynamic.onnx")
    subprocess.run([BIN, "export", "onnx", weights, "--config", config, "--dynamic", "--deform", deform,
                    "-o", out], check=True, capture_output=True)
    onnx.checker.check_model(out, full_check=True)
    model = onnx.load(out)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"], dims
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    keys = ["f1", "f2", "f3", "f4"] + (["x"] if case["flavor"] == "beit-comer" else [])

    rng = np.random.default_rng(7)
    inputs = {f"n{n}_{h}x{w}": rng.standard_normal((n, 3, h, w), dtype=np.float32) for n, h, w in DYNAMIC_SIZES}
    batch = os.path.join(tmp, "inputs.safetensors")
    save_file(inputs, batch)
    rust = os.path.join(tmp, "rust.safetensors")
    subprocess.run([BIN, "run", "--weights", weights, "--config", config, "--input", batch, "-o", rust, "-q"],
                   check=True, capture_output=True)
    reference = load_file(rust)
    checks = [(name, img, {k: reference[f"{name}.out.{k}"] for k in keys}) for name, img in inputs.items()]
    if config.endswith("case.json"):
        # Upstream's own outputs on the fixture inputs.
        fx_in = load_file(os.path.join(case_dir, "inputs.safetensors"))
        fx_out = load_file(os.path.join(case_dir, "expected.safetensors"))
        checks += [(f"fixture {n}", img, {k: fx_out[f"{n}.out.{k}"] for k in keys}) for n, img in fx_in.items()]
    # An input whose sides are not multiples of 32 fails, naming the guard node.
    with pytest.raises(Exception, match="multiples_of_32"):
        sess.run(None, {"image": np.zeros((1, 3, 64, 80), np.float32)})
    for name, img, expected in checks:
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": img})))
        for k in keys:
            exp = expected[k]
            assert got[k].shape == exp.shape, (name, k, got[k].shape, exp.shape)
            err = float(np.abs(got[k] - exp).max())
            tol = TOL["f32"] * max(1.0, float(np.abs(exp).max()))
            print(f"{os.path.basename(case_dir)} dynamic {deform} {name} {k}: {err:.3e} (tol {tol:.3e})")
            assert err <= tol, (name, k, err, tol)
