#!/usr/bin/python3
"""Run under LD_PRELOAD=libhpdl_intercept.so: memory-mapped reads of MOUNT through
numpy (np.load(mmap_mode="r"), np.memmap) and Python's mmap module (which maps a
dup of the fd) must give the same values as SRC read without maps; os.dup must
share the offset. Exit 0 when all match; exits 77 without numpy."""
import mmap
import os
import sys

try:
    import numpy as np
except ImportError:
    sys.exit(77)

src, mount = sys.argv[1], sys.argv[2]
bad = []

want = np.load(os.path.join(src, "arr.npy"))
got = np.load(os.path.join(mount, "arr.npy"), mmap_mode="r")
if not isinstance(got, np.memmap):
    bad.append(f"np.load(mmap_mode='r') gave {type(got)}, not a memmap")
if got.shape != want.shape or not np.array_equal(np.asarray(got), want):
    bad.append("np.load(mmap_mode='r') values differ")
# A window at an offset that is not a page multiple (numpy maps from the page below).
raw = np.memmap(os.path.join(mount, "numbers.txt"), dtype=np.uint8, mode="r", offset=5000, shape=(3000,))
with open(os.path.join(src, "numbers.txt"), "rb") as f:
    data = f.read()
if bytes(raw) != data[5000:8000]:
    bad.append("np.memmap window at offset 5000 differs")
del got, raw

with open(os.path.join(mount, "numbers.txt"), "rb") as f:
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if len(m) != len(data) or m[:] != data:
            bad.append("mmap.mmap whole file differs")
        if m.find(b"\n199999\n") != data.find(b"\n199999\n"):
            bad.append("mmap.mmap find differs")
    g = os.dup(f.fileno())
    f.seek(0)
    os.lseek(f.fileno(), 10, os.SEEK_SET)
    if os.read(g, 6) != data[10:16]:
        bad.append("os.dup does not share the offset")
    os.close(g)
    if os.read(f.fileno(), 4) != data[16:20]:
        bad.append("the original fd after closing its dup")

try:
    with open(os.path.join(mount, "numbers.txt"), "r+b") as f:
        bad.append("opening for update succeeded")
except OSError:
    pass

for b in bad:
    print("FAILED:", b)
print("mmap_numpy:", "OK" if not bad else "MISMATCH")
sys.exit(1 if bad else 0)
