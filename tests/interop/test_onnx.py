"""ONNX Runtime parity of `comer-port export onnx` on every fixtures/forward case.

For each case and input: export with the case's config and weights, `onnx.checker` passes,
and ONNX Runtime CPU reproduces upstream's f1..f4 (and x for beit-comer) within
max|got - exp| <= 1e-4 * max(1, max|exp|). Both deformable-attention formulations are run.
"""
import glob
import os

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


def test_cases_present():
    assert len(CASES) >= 4
