"""Issue 7's measurement, in one run on one machine: the Rust forward beside PyTorch eager, and
`comer-port import` beside the Python pipeline, with medians, peak RSS and ratios; the table is
printed and written into docs/performance.md between its side-by-side markers.

  forward  `comer-port bench --preset vit-comer-s-seg --size 512 --threads 2`  vs
           `bench/torch_ref.py bench` (the project's compact eager PyTorch ViT-CoMer, proven
           against the fixtures by `bench/torch_ref.py check`), same preset, size, threads.
  import   `comer-port import BEITV2_L --preset beit-comer-l-codetr --no-verify`  vs
           `bench/python_import.py` (torch.load + remap + resize + save_file), same input; the
           floor `cp` of the input plus writing the output's size from /dev/zero is timed too.
           Before every import run the previous output is removed and `sync` is called, so
           each run starts with the same clean page cache state.

Peak RSS is each process's own (`wait4` rusage), not a figure the tool reports about itself.
The runs of the two sides alternate so that load drifts hit both alike.

Usage (torch must import in --python; the Rust binary must be built with --release):
  python bench/side_by_side.py --python /path/to/venv/bin/python [--runs 5] [--import-runs 3]
      [--large /tmp/beitv2_large.pth] [--no-write]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import doc_section  # noqa: E402
BEGIN = "<!-- side-by-side:begin (bench/side_by_side.py writes this section) -->"
END = "<!-- side-by-side:end -->"


def rss_of(cmd, cwd=ROOT):
    """Run cmd with wait4; return (wall seconds, peak RSS bytes, stdout)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as so, tempfile.TemporaryFile(mode="w+") as se:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=so, stderr=se, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, ru.ru_maxrss * 1024, out


def sync():
    os.sync()
    time.sleep(1.0)


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def fmt_s(x):
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def fmt_mb(b):
    return f"{b / 1e6:,.0f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter with torch, numpy, safetensors")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/comer-port"))
    ap.add_argument("--runs", type=int, default=5, help="timed forward runs per process (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="forward processes per side, alternating")
    ap.add_argument("--import-runs", type=int, default=3)
    ap.add_argument("--large", default=os.path.join(tempfile.gettempdir(), "beitv2_large.pth"))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "comer-side-by-side"))
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    a = ap.parse_args()

    if not os.path.exists(a.binary):
        sys.exit(f"{a.binary}: build it first (cargo build --release)")
    probe = subprocess.run([a.python, "-c", "import torch, safetensors; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"{a.python}: torch and safetensors must import there (pip install torch safetensors numpy)")
    torch_version = probe.stdout.strip()
    commit, started = doc_section.commit(), doc_section.utc_now()
    load_before = load()
    rows = []

    if not a.skip_forward:
        rust_cmd = [a.binary, "bench", "--preset", "vit-comer-s-seg", "--size", "512", "--threads", "2",
                    "--runs", str(a.runs), "--json"]
        torch_cmd = [a.python, "bench/torch_ref.py", "bench", "--preset-json",
                     "fixtures/layouts/vit-comer-seg_small_ade20k.json", "--size", "512", "--threads", "2",
                     "--runs", str(a.runs)]
        check = subprocess.run([a.python, "bench/torch_ref.py", "check"], cwd=ROOT, capture_output=True, text=True)
        if check.returncode != 0:
            sys.exit(f"bench/torch_ref.py check failed: the PyTorch reference is not trusted\n{check.stdout}{check.stderr}")
        rust_t, torch_t, rust_rss, torch_rss = [], [], [], []
        for _ in range(a.rounds):
            _, rss, out = rss_of(rust_cmd)
            rust_t.append(json.loads(out)["median_s"])
            rust_rss.append(rss)
            _, rss, out = rss_of(torch_cmd)
            torch_t.append(json.loads(out.strip().splitlines()[-1])["median_s"])
            torch_rss.append(rss)
        r, t = statistics.median(rust_t), statistics.median(torch_t)
        rows.append(("forward, vit-comer-s-seg 512×512, 2 threads (median of per-process medians)",
                     "PyTorch eager " + torch_version, t, max(torch_rss), r, max(rust_rss),
                     f"{t / r:.2f}× faster", f"{max(rust_rss) / max(torch_rss):.2f}×",
                     " ".join(rust_cmd[1:]), " ".join(torch_cmd[1:])))

    if not a.skip_import:
        if not os.path.exists(a.large):
            print(f"generating {a.large} (bench/make_beitv2_large.py)", file=sys.stderr)
            subprocess.run([a.python, "bench/make_beitv2_large.py", a.large], cwd=ROOT, check=True)
        os.makedirs(a.workdir, exist_ok=True)
        rust_out = os.path.join(a.workdir, "rust", "beit.safetensors")
        py_out = os.path.join(a.workdir, "py.safetensors")
        cp_out = os.path.join(a.workdir, "cp.pth")
        rust_cmd = [a.binary, "import", a.large, "--preset", "beit-comer-l-codetr", "-o", rust_out,
                    "--no-verify", "--force"]
        py_cmd = [a.python, "bench/python_import.py", a.large, py_out, "--build-module"]
        lean_cmd = [a.python, "bench/python_import.py", a.large, py_out]

        def clean():
            shutil.rmtree(os.path.dirname(rust_out), ignore_errors=True)
            os.makedirs(os.path.dirname(rust_out), exist_ok=True)
            for f in (py_out, cp_out, cp_out + ".out"):
                if os.path.exists(f):
                    os.remove(f)
            sync()

        subprocess.run(["cat", a.large], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        rust_t, py_t, rust_rss, py_rss, floor_t, lean_t, lean_rss = [], [], [], [], [], [], []
        out_size = None
        for _ in range(a.import_runs):
            clean()
            w, rss, _ = rss_of(rust_cmd)
            rust_t.append(w)
            rust_rss.append(rss)
            out_size = os.path.getsize(rust_out)
            clean()
            w, rss, _ = rss_of(py_cmd)
            py_t.append(w)
            py_rss.append(rss)
            clean()
            w, rss, _ = rss_of(lean_cmd)
            lean_t.append(w)
            lean_rss.append(rss)
            clean()
            t0 = time.perf_counter()
            subprocess.run(["cp", a.large, cp_out], check=True)
            subprocess.run(["dd", "if=/dev/zero", f"of={cp_out}.out", "bs=1M", f"count={out_size >> 20}"],
                           check=True, capture_output=True)
            floor_t.append(time.perf_counter() - t0)
        clean()
        r, p, f = statistics.median(rust_t), statistics.median(py_t), statistics.median(floor_t)
        rows.append(("import, BEiTv2-L-shaped 1.23 GB → beit-comer-l-codetr (median, whole process)",
                     "Python pipeline as BENCHMARKS.md: build module (fresh init), load, save_file (torch "
                     + torch_version + ")", p, max(py_rss), r, max(rust_rss),
                     f"{p / r:.2f}× faster", f"{max(rust_rss) / max(py_rss):.2f}×",
                     " ".join(rust_cmd[1:]), " ".join(py_cmd[1:])))
        lp = statistics.median(lean_t)
        rows.append(("import, same input and output",
                     "leaner Python pipeline: target tensors built directly, no module", lp, max(lean_rss), r,
                     max(rust_rss), f"{lp / r:.2f}× faster", f"{max(rust_rss) / max(lean_rss):.2f}×",
                     " ".join(rust_cmd[1:]), " ".join(lean_cmd[1:])))
        rows.append(("copy floor: cp of the input + writing the output's size", "", None, None, f, None,
                     f"comer-port import is {r / f:.2f}× the floor", "", "cp IN; dd if=/dev/zero", ""))

    load_after = load()
    lines = [BEGIN, "", f"## Side by side (bench/side_by_side.py, {started}, commit {commit})", "",
             f"Machine: {machine()}; load average {load_before:.2f} before, {load_after:.2f} after.",
             f"Command: `python bench/side_by_side.py --python PY --runs {a.runs} --rounds {a.rounds} "
             f"--import-runs {a.import_runs}`.", "",
             "| measurement | baseline | baseline time | baseline peak RSS | comer-port time | comer-port peak RSS | speed | memory |",
             "|---|---|---|---|---|---|---|---|"]
    for (what, base, bt, brss, rt, rrss, speed, mem, _, _) in rows:
        lines.append(f"| {what} | {base} | {fmt_s(bt) if bt is not None else ''} | {fmt_mb(brss) if brss else ''} | "
                     f"{fmt_s(rt)} | {fmt_mb(rrss) if rrss else ''} | {speed} | {mem} |")
    lines.append("")
    lines.append("Commands (from the repository root):")
    lines.append("")
    for (what, _, _, _, _, _, _, _, rc, bc) in rows:
        if bc:
            lines.append(f"- {what.split(',')[0]}: `comer-port {rc}` beside `python {bc}`")
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if not a.no_write:
        path = os.path.join(ROOT, "docs/performance.md")
        text = open(path).read()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        open(path, "w").write(text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
