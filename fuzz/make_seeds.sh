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
# Issue 14: the whole-file target gets every container, plus small hostile shapes (shared
# deflate streams, overlapping stored members, memo/DUP amplification) next to valid files.
mkdir -p seeds/open_file
cp seeds/torch_zip/* seeds/legacy/* seeds/safetensors/* seeds/npy_npz/*.npz seeds/open_file/
python3 - <<'PY'
import struct, zlib
def local(b, name, data, method):
    raw = data
    if method == 8:
        c = zlib.compressobj(9, zlib.DEFLATED, -15); raw = c.compress(data) + c.flush()
    off = len(b); nb = name.encode()
    b += struct.pack('<IHHHHHIIIHH', 0x04034b50, 20, 0, method, 0, 0, zlib.crc32(data), len(raw), len(data), len(nb), 0) + nb + raw
    return (off, method, zlib.crc32(data), len(raw), len(data))
def central(name, i):
    off, m, crc, comp, size = i; nb = name.encode()
    return struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 20, 20, 0, m, 0, 0, crc, comp, size, len(nb), 0, 0, 0, 0, 0, off) + nb
def finish(b, cds):
    o = len(b); cd = b''.join(cds); b += cd
    b += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, len(cds), len(cds), len(cd), o, 0)
    return bytes(b)
hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1024,), }"
hdr += b' ' * (63 - (10 + len(hdr)) % 64) + b'\n'
npy = b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr + b'\0' * 4096
b = bytearray(); i = local(b, 'a0.npy', npy, 8)
open('seeds/open_file/shared_deflate.npz', 'wb').write(finish(b, [central(f'a{k}.npy', i) for k in range(3)]))
def s(x): x = x.encode(); return b'X' + struct.pack('<I', len(x)) + x
amp = b'\x80\x02' + s('a' * 4096) + b'q\x00' + b'0(' + b'h\x00' * 64 + b'l.'
open('seeds/pickle_vm/binget_amplification.pkl', 'wb').write(amp)
dup = b'\x80\x02(' + s('a' * 4096) + b'2' * 64 + b'l.'
open('seeds/pickle_vm/dup_amplification.pkl', 'wb').write(dup)
for name, pk in [('amp_in_zip.pth', amp)]:
    b = bytearray(); cds = [central('archive/data.pkl', local(b, 'archive/data.pkl', pk, 0))]
    cds.append(central('archive/byteorder', local(b, 'archive/byteorder', b'little', 0)))
    open('seeds/open_file/' + name, 'wb').write(finish(b, cds))
PY
# open_deferred (the import's deferred-CRC reader, differential against open_file's path): the same seeds.
mkdir -p seeds/open_deferred
cp seeds/open_file/* seeds/open_deferred/
