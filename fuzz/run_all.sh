#!/usr/bin/env bash
# Run every fuzz target for $1 seconds (default 600), two at a time, logging to fuzz/logs/.
# Build first with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -O)
set -u
T=${1:-600}
cd "$(dirname "$0")"
B=target/x86_64-unknown-linux-gnu/release
mkdir -p logs
run() {
  for t in "$@"; do
    mkdir -p corpus/$t artifacts/$t
    $B/$t corpus/$t seeds/$t -max_total_time=$T -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix=artifacts/$t/ -print_final_stats=1 > logs/$t.log 2>&1
    echo "$t exit $?" >> logs/summary.txt
  done
}
run pickle_vm torch_zip legacy &
run torchscript safetensors npy_npz open_file open_deferred &
wait
