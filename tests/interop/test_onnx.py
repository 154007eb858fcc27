"""ONNX Runtime parity of `comer-port export onnx` on every fixtures/forward case.

For each case and input: export with the case's config and weights, `onnx.checker` passes,
and ONNX Runtime CPU reproduces upstream's f1..f4 (and x for beit-comer) within
max|got - exp| <= 1e-4 * max(1, max|exp|) (5e-3 for `--dtype f16` graphs). Both
deformable-attention formulations are run.
"""
import glob
import os

import onnx
import pytest

from check_case import ROOT, compare

CASES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "forward", "*")))


@pytest.mark.parametrize("deform", ["gather", "grid-sample"])
@pytest.mark.parametrize("case_dir", CASES, ids=[os.path.basename(c) for c in CASES])
def test_forward_case(case_dir, deform, tmp_path):
    rows = list(compare(case_dir, deform, str(tmp_path)))
    assert rows, "no outputs compared"
    for name, key, err, tol in rows:
        print(f"{os.path.basename(case_dir)} {deform} {name} {key}: {err:.3e} (tol {tol:.3e})")
    bad = [(n, k, e, t) for n, k, e, t in rows if not e <= t]
    assert not bad, f"outputs outside tolerance: {bad}"


@pytest.mark.parametrize("deform", ["gather", "grid-sample"])
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
