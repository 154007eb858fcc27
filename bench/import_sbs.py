"""Time one import command under two comer-port binaries, alternated, on a quiet machine.

The baseline is a binary built from an earlier commit beside the new one (`git worktree add
../baseline <commit> && cargo build --release` there). Runs alternate A, B, A, B, … so both
see the same page-cache and load conditions; each run writes into a fresh folder that is
removed after. Prints per-run seconds, each side's median and the ratio new / old, and the
peak RSS of each side (`ru_maxrss` of the child, read with `os.wait4`).

Usage: python bench/import_sbs.py OLD_BIN NEW_BIN SOURCE [--runs 7] -- IMPORT ARGS...
e.g.   python bench/import_sbs.py ../baseline/target/release/comer-port target/release/comer-port \
           /work/real/beitv2_large.pth -- --preset beit-comer-l-codetr --no-verify
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(binary, source, args):
    d = tempfile.mkdtemp(prefix="sbs-")
    try:
        cmd = [binary, "import", source, "-o", os.path.join(d, "out.safetensors"), *args]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        err = p.stderr.read().decode(errors="replace")
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            sys.exit(f"{binary} exited {code}:\n{err}")
        return dt, ru.ru_maxrss / 1024
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("source")
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args(argv)
    run(a.old, a.source, extra)  # warm the page cache once, untimed
    times = {"old": [], "new": []}
    rss = {"old": [], "new": []}
    for i in range(a.runs):
        for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
            dt, mb = run(getattr(a, side), a.source, extra)
            times[side].append(dt)
            rss[side].append(mb)
    for side in ("old", "new"):
        print(f"{side}: " + " ".join(f"{t:.3f}" for t in times[side])
              + f"  median {statistics.median(times[side]):.3f} s, peak RSS {max(rss[side]):.0f} MB")
    r = statistics.median(times["new"]) / statistics.median(times["old"])
    print(f"new / old = {r:.3f} (median of {a.runs} alternated runs each)")


if __name__ == "__main__":
    main()
