"""comer-port `libtorch` feature: PyTorch's own reading of a trusted checkpoint (docs/libtorch.md).

Run inside comer-port's embedded interpreter by src/libtorch/shim.cpp, which calls
`tensors(path)`: `torch.load(weights_only=True)` (torch/serialization.py, zip and legacy files
alike), then every tensor under the dotted path comer-port's readers give it
(src/formats/value.rs `collect_tensors`): dict keys, list and tuple indices, an
argparse.Namespace's attributes under its own path.
"""
import argparse
import zipfile

import torch

# What comer-port's allowlist admits beyond torch.load's defaults, and only that: the untyped
# storage under both names a pickle can give it (torch.storage.UntypedStorage, torch.UntypedStorage),
# and argparse.Namespace (training scripts' `args`).
SAFE_GLOBALS = [
    torch.UntypedStorage,
    (torch.UntypedStorage, "torch.UntypedStorage"),
    argparse.Namespace,
]


def _key(k):
    """A dict key as comer-port's readers write it (src/formats/value.rs `key_text`)."""
    if isinstance(k, bool):
        return "true" if k else "false"
    if isinstance(k, int):
        return str(k) if -(2**63) <= k < 2**63 else "<int>"
    if isinstance(k, str):
        return k
    kinds = [(type(None), "none"), (float, "float"), (bytes, "bytes"), (tuple, "tuple"), (list, "list"),
             (dict, "dict"), (torch.Tensor, "tensor")]
    return "<%s>" % next((name for t, name in kinds if isinstance(k, t)), "object")


def _walk(value, prefix, out):
    def join(k):
        return k if not prefix else prefix + "." + k

    if isinstance(value, torch.Tensor):
        out.append((prefix, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, join(_key(k)), out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, join(str(i)), out)
    elif isinstance(value, argparse.Namespace):
        _walk(vars(value), prefix, out)


def tensors(path):
    # A zip archive is memory-mapped (its tensors are not copied into memory); a legacy stream
    # cannot be.
    mmap = zipfile.is_zipfile(path)
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        root = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    out = []
    _walk(root, "", out)
    return out
