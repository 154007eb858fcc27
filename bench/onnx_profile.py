"""Per-op-type time breakdown of an ONNX model in ONNX Runtime (CPU, 2 threads, one run).

Usage: onnx_profile.py MODEL.onnx [--threads 2]
"""
import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

model = sys.argv[1]
threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.enable_profiling = True
so.profile_file_prefix = os.path.join("/tmp", "ort_profile")
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
shape = sess.get_inputs()[0].shape
img = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
sess.run(None, {"image": img})
prof = sess.end_profiling()
events = json.load(open(prof))
by_op = collections.Counter()
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        by_op[e["args"]["op_name"]] += e["dur"]
total = sum(by_op.values())
print(f"total kernel time {total / 1e6:.3f} s")
for op, d in by_op.most_common(15):
    print(f"{op:24s} {d / 1e6:8.3f} s  {100 * d / total:5.1f}%")
if "--nodes" in sys.argv:
    by_node = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    for n, d in by_node.most_common(25):
        print(f"{d / 1e3:9.1f} ms  {n}")
