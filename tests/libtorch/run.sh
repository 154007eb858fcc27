#!/usr/bin/env bash
# The `libtorch` cargo feature (docs/libtorch.md): build comer-port against the torch 2.13 wheel of
# a virtualenv (the interop one, tests/interop/run.sh, by default; made here with torch==2.13.* when
# it is missing) and run the feature's tests (tests/it/libtorch.rs). Exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="${COMER_INTEROP_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.13."))' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'torch==2.13.*' numpy
fi
# tch's build script asks this interpreter where libtorch is (LIBTORCH_USE_PYTORCH=1).
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
cargo build --release --locked --features libtorch
cargo test --release --locked --features libtorch --test it libtorch::
