"""Interop: mmengine's `load_checkpoint(model, path, strict=True)` (what mmdet / mmseg /
Co-DETR's `load_from` and `init_cfg=Pretrained` call) loads the `.pth` comer-port writes into
a module with upstream's exact state-dict layout, for each flavour, with and without
`--key-prefix backbone.` (then into a detector-like wrapper whose `backbone` is the module).

The module: upstream's names, shapes and dtypes are those of the forward fixtures'
`weights.safetensors` (upstream's own `state_dict()`, shared oracle), registered as
parameters (float) and buffers (int64) of nested modules, the way upstream's `ViTCoMer` /
`BEiTComer2` hold them; its forward is `bench/torch_ref.py` (the project's PyTorch
re-implementation of upstream's det/seg forward with upstream's names). Run by `.ci/run`
through tests/interop/run.sh.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from mmengine.runner.checkpoint import load_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("COMER_PORT", str(ROOT / "target" / "release" / "comer-port"))
sys.path.insert(0, str(ROOT / "bench"))
import torch_ref  # noqa: E402

# (forward fixture whose upstream state dict gives the layout, source checkpoint)
CASES = {
    "vit-comer-det": ("det_tiny", "deit/deit_tiny.pth"),
    "vit-comer-seg": ("seg_tiny", "deit/deit_tiny.pth"),
    "beit-comer": ("beit_tiny", "beitv2/beitv2_tiny_ft.pth"),
}


class UpstreamLayout(torch.nn.Module):
    """Upstream's backbone state-dict layout for one fixture case, nothing else."""

    def __init__(self, case):
        super().__init__()
        d = ROOT / "fixtures" / "forward" / case
        meta = json.loads((d / "case.json").read_text())
        self.flavor = meta["flavor"]
        self.cfg = torch_ref.full_cfg(meta["constructor_kwargs"])
        for name, t in load_file(str(d / "weights.safetensors")).items():
            *path, leaf = name.split(".")
            mod = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            blank = torch.full_like(t, float("nan")) if t.is_floating_point() else torch.full_like(t, -1)
            if t.is_floating_point():
                mod.register_parameter(leaf, torch.nn.Parameter(blank, requires_grad=False))
            else:
                mod.register_buffer(leaf, blank)

    def forward(self, img):
        return torch_ref.forward(self.state_dict(), self.cfg, self.flavor, img)


class Detector(torch.nn.Module):
    """What mmdet's `load_from` loads into: the backbone under `backbone`, and a head."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def _import(flavor, out, extra=()):
    case, src = CASES[flavor]
    subprocess.run(
        [BIN, "import", str(ROOT / "fixtures" / "sources" / src), "--quiet",
         "--config", str(ROOT / "fixtures" / "forward" / case / "case.json"),
         "-o", str(out / "a.safetensors"), "--pth", str(out / "a.backbone.pth"), *extra],
        check=True,
    )
    return load_file(str(out / "a.safetensors"))


@pytest.mark.parametrize("flavor", sorted(CASES))
@pytest.mark.parametrize("prefix", [None, "backbone."])
def test_mmengine_loads_strict_into_upstream_layout(flavor, prefix):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d)
        extra = ["--key-prefix", prefix] if prefix else []
        written = _import(flavor, out, extra)
        backbone = UpstreamLayout(CASES[flavor][0])
        model = Detector(backbone) if prefix else backbone
        # strict=True: a missing, unexpected or mis-shaped key raises.
        ckpt = load_checkpoint(model, str(out / "a.backbone.pth"), map_location="cpu", strict=True)
        assert set(ckpt) == {"state_dict", "meta"}
        loaded = backbone.state_dict()
        assert set(loaded) == set(written)
        for k, v in written.items():
            assert loaded[k].dtype == v.dtype, k
            assert torch.equal(loaded[k], v), k
        with torch.no_grad():
            f = backbone(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        shapes = [(1, 48, 16, 16), (1, 48, 8, 8), (1, 48, 4, 4), (1, 48, 2, 2)]
        if backbone.flavor == "beit-comer":  # and BEiTComer2's ViT map
            shapes.append((1, 48, 4, 4))
        assert [tuple(t.shape) for t in f] == shapes
        assert all(torch.isfinite(t).all() for t in f)


def test_a_missing_key_fails_strict_loading():
    """The check can fail: a layout with one key more than the file is refused by strict=True."""
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d)
        _import("vit-comer-det", out)
        model = UpstreamLayout("det_tiny")
        model.register_parameter("extra_key", torch.nn.Parameter(torch.zeros(1)))
        with pytest.raises(RuntimeError, match="extra_key"):
            load_checkpoint(model, str(out / "a.backbone.pth"), map_location="cpu", strict=True)
