#!/usr/bin/env bash
# ONNX interop tests: make a virtualenv, install onnx/onnxruntime/numpy/safetensors/pytest,
# build the release binary, and run pytest on tests/interop. Exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="${COMER_INTEROP_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
cargo build --release --bin comer-port
export COMER_PORT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/comer-port"
export COMER_PORT="$COMER_PORT_BIN"
"$VENV/bin/python" -m pytest -q -rA tests/interop "$@"
