#!/usr/bin/python3
"""Python peer of posix_reader.c: open/read/close each file of LIST (relative to
ROOT) in the listed (random) order, as a PyTorch Dataset.__getitem__ would.
usage: py_reader.py ROOT LIST EPOCHS LABEL"""
import sys
import time

root, lst, epochs, label = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
paths = [f"{root}/{l.strip()}" for l in open(lst) if l.strip()]
for e in range(1, epochs + 1):
    t0 = time.perf_counter()
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += len(f.read())
    dt = time.perf_counter() - t0
    print(f"mode={label} epoch={e} reads={len(paths)} bytes={n} sec={dt:.4f} "
          f"reads_per_s={len(paths) / dt:.0f} MB_per_s={n / dt / 1e6:.1f}", flush=True)
