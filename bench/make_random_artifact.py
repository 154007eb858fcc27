"""Write a random-weights safetensors artifact in an upstream layout (fixtures/layouts/*.json).

Usage: make_random_artifact.py LAYOUT.json OUT.safetensors [--seed N]
Linear/conv weights ~ N(0, 0.02), norm weights 1, biases/means 0, variances 1, int64 buffers
0 (relative_position_index is recomputed by the exporter). The layout's flavour and
constructor kwargs go into metadata `comer_port.config`, as `comer-port import` writes them.
"""
import json
import sys

import numpy as np
from safetensors.numpy import save_file


def main():
    layout_path, out = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    layout = json.load(open(layout_path))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, dtype in layout["state_dict"]:
        if dtype == "int64":
            tensors[name] = np.zeros(shape, dtype=np.int64)
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t = np.ones(shape)
        elif leaf in ("bias", "running_mean", "q_bias", "v_bias"):
            t = np.zeros(shape)
        elif len(shape) == 1:  # norm weights, layer scale, gamma
            t = np.ones(shape) if leaf == "weight" else np.full(shape, 0.5)
        else:
            t = rng.normal(0.0, 0.02, size=shape)
        tensors[name] = np.ascontiguousarray(t, dtype=np.float32)
    config = {"flavor": layout["flavor"], "constructor_kwargs": layout["constructor_kwargs"]}
    save_file(tensors, out, metadata={"comer_port.config": json.dumps(config)})
    print(f"wrote {out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
