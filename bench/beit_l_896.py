"""Issue 16's large forward beside PyTorch: BEiT-comer-L (the Co-DETR preset, 24 BEiT blocks
with 14x14 and 56x56 windows) at 896x896, the Rust forward (`comer-port bench`) beside eager
PyTorch (`bench/torch_ref.py bench`, the project's own PyTorch BEiT-comer, proven against the
`beit_tiny` fixture by `bench/torch_ref.py check`), same preset, size and threads, seeded
random weights on both sides. Rounds alternate the two sides; each process warms up once and
times `--runs` forwards; the table gives the median of the per-process medians and each
process's own peak RSS (`wait4`).

  python bench/beit_l_896.py --python /path/to/venv/bin/python [--rounds 2] [--runs 1] [--write docs/performance.md]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from doc_section import commit, publish, utc_now  # noqa: E402
BEGIN = "<!-- beit-l-896:begin (bench/beit_l_896.py writes this section) -->"
END = "<!-- beit-l-896:end -->"


def rss_of(cmd):
    """Run cmd; (peak RSS bytes of the child from wait4, stdout)."""
    with open(os.devnull, "w") as null:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=null, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return ru.ru_maxrss * 1024, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="a Python with torch")
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "comer-port"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--size", type=int, default=896)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write")
    a = ap.parse_args()
    rust_cmd = [a.binary, "bench", "--preset", "beit-comer-l-codetr", "--size", str(a.size), "--threads", str(a.threads),
                "--runs", str(a.runs), "--json"]
    torch_cmd = [a.python, "bench/torch_ref.py", "bench", "--preset-json", "fixtures/layouts/beit-comer_large_codetr.json",
                 "--size", str(a.size), "--threads", str(a.threads), "--runs", str(a.runs)]
    rust, torch = [], []
    for r in range(a.rounds):
        for side, cmd, into in (("rust", rust_cmd, rust), ("pytorch", torch_cmd, torch)):
            t = time.perf_counter()
            rss, out = rss_of(cmd)
            j = json.loads(out.strip().splitlines()[-1])
            j["peak_rss_bytes"] = rss  # the process's own (wait4), not what it reports
            into.append(j)
            print(f"round {r + 1} {side}: median {j['median_s']:.2f} s, peak {j['peak_rss_bytes'] / 2**20:.0f} MiB "
                  f"({time.perf_counter() - t:.0f} s wall)", file=sys.stderr)
    med = lambda xs: statistics.median(x["median_s"] for x in xs)
    peak = lambda xs: max(x["peak_rss_bytes"] for x in xs)
    text = (
        f"BEiT-comer-L (`beit-comer-l-codetr`) forward at {a.size}×{a.size}, {a.threads} threads, seeded random weights, "
        f"{a.rounds} alternated rounds × {a.runs} timed forward(s) after one warm-up, "
        f"{utc_now()}, commit {commit()}, `python bench/beit_l_896.py`:\n\n"
        "| runner | forward (median) | peak RSS | ratio |\n|---|---|---|---|\n"
        f"| PyTorch eager {torch[0].get('torch', '')} (`bench/torch_ref.py`) | {med(torch):.2f} s | {peak(torch) / 2**20:,.0f} MiB | 1.00× |\n"
        f"| comer-port (`comer-port bench`) | {med(rust):.2f} s | {peak(rust) / 2**20:,.0f} MiB | "
        f"{med(torch) / med(rust):.2f}× faster, {peak(rust) / peak(torch):.2f}× the memory |\n"
    )
    publish(text, a.write, BEGIN, END)


if __name__ == "__main__":
    main()
