#!/usr/bin/env bash
# Build the seed corpora from the project's fixtures (kept out of git: they are copies).
set -eu
cd "$(dirname "$0")"
S=../fixtures/sources
G=../fixtures/generated
mkdir -p seeds/{torch_zip,torchscript,legacy,safetensors,npy_npz,pickle_vm}
cp $S/deit/deit_tiny_fp16.pth $S/beitv2/beitv2_tiny_pt_shared_relpos.pth $G/dtypes_be.pth $G/untyped_v3.pth seeds/torch_zip/
cp $S/clip/clip_tiny_quickgelu_visual_jit.pt seeds/torchscript/
cp $S/deit/deit_tiny_legacy.pth $G/legacy_views.pth seeds/legacy/
cp $S/augreg/golden.safetensors seeds/safetensors/
cp $S/augreg/augreg_tiny.npz $G/arrays.npz $G/single_be.npy seeds/npy_npz/
python3 - <<'PY'
import zipfile
S = "../fixtures/sources"
z = zipfile.ZipFile(f"{S}/augreg/augreg_tiny.npz"); open("seeds/npy_npz/bias.npy", "wb").write(z.read("embedding/bias.npy"))
z = zipfile.ZipFile(f"{S}/deit/deit_tiny.pth"); open("seeds/pickle_vm/deit_data.pkl", "wb").write(z.read("deit_tiny/data.pkl"))
z = zipfile.ZipFile(f"{S}/clip/clip_tiny_quickgelu_visual_jit.pt"); open("seeds/pickle_vm/jit_data.pkl", "wb").write(z.read("clip_tiny_quickgelu_visual_jit/data.pkl"))
PY
