"""Interop: the `.pth` comer-port writes loads with `torch.load(weights_only=True)` (what
mmcv/mmengine `load_checkpoint` calls) into exactly the tensors of the `.safetensors` it
writes beside it. Run by `.ci/run` in a virtualenv with torch CPU (see requirements.txt).

Usage: COMER_PORT=target/release/comer-port pytest tests/interop/test_pth_torch.py
"""

import os
import pathlib
import subprocess
import tempfile

import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("COMER_PORT", str(ROOT / "target" / "release" / "comer-port"))


def _import(src, case, out, extra=()):
    subprocess.run(
        [BIN, "import", str(ROOT / "fixtures" / "sources" / src),
         "--config", str(ROOT / "fixtures" / "forward" / case / "case.json"),
         "-o", str(out / "a.safetensors"), "--pth", str(out / "a.pth"), *extra],
        check=True,
    )


def _check(out):
    ckpt = torch.load(out / "a.pth", weights_only=True, map_location="cpu")
    assert set(ckpt) == {"state_dict", "meta"}
    sd = ckpt["state_dict"]
    ref = load_file(str(out / "a.safetensors"))
    assert list(sd) == list(ref) or set(sd) == set(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype, k
        assert sd[k].shape == v.shape, k
        assert torch.equal(sd[k], v), k
    assert ckpt["meta"]["comer_port.flavor"] in ("vit-comer-det", "vit-comer-seg", "beit-comer")


def test_det_tiny_pth_equals_safetensors():
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d)
        _import("deit/deit_tiny.pth", "det_tiny", out)
        _check(out)


def test_beit_tiny_pth_equals_safetensors_f16():
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d)
        _import("beitv2/beitv2_tiny_ft.pth", "beit_tiny", out, ["--dtype", "f16"])
        _check(out)


def test_loads_into_upstream_shapes():
    """The forward fixture holds upstream's own state_dict: names and shapes agree."""
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d)
        _import("deit/deit_tiny.pth", "det_tiny", out)
        sd = torch.load(out / "a.pth", weights_only=True)["state_dict"]
        up = load_file(str(ROOT / "fixtures" / "forward" / "det_tiny" / "weights.safetensors"))
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in up.items()}
