#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name:
GPU time per step by kernel family, largest first.
Usage: ncu_summary.py NCU_CSV [STEPS]"""
import collections
import csv
import sys

path, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
rows = [r for r in csv.DictReader(line for line in open(path) if line.startswith('"'))]
total = collections.Counter()
count = collections.Counter()
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0].split("<")[0][:60]
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "ns")
    v *= {"ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "nsecond": 1e-6}.get(unit, 1e-6)
    total[name] += v
    count[name] += 1
all_ms = sum(total.values())
print(f"{len(rows)} kernels, {all_ms / steps:.2f} ms of GPU time per step")
for name, ms in total.most_common(25):
    print(f"{ms / steps:9.3f} ms  {100 * ms / all_ms:5.1f}%  {count[name] // steps:5d}x  {name}")
