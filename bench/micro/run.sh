#!/bin/sh
# Times hpdl (bench_ops) and PyTorch (torch_peer.py) on the same shapes in one
# go, 2 threads each, and prints a table: min/median ms and GFLOP/s of both,
# and hpdl/PyTorch as a ratio (>1: hpdl faster). Usage, from the repo root
# after building:  bench/micro/run.sh [build-dir] [repetitions]
set -eu
BUILD=${1:-build}
REPS=${2:-5}
OUT=${OUT:-$BUILD/bench/micro-results}
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
"$BUILD/bench/hpdl_bench_ops" --benchmark_repetitions="$REPS" --benchmark_min_time=0.5 \
  --benchmark_format=json --benchmark_out="$OUT/hpdl.json" --benchmark_out_format=json >/dev/null
/usr/bin/python3 "$(dirname "$0")/torch_peer.py" "$REPS" 0.5 >"$OUT/torch.json"
/usr/bin/python3 - "$OUT/hpdl.json" "$OUT/torch.json" <<'PY'
import json, statistics, sys
h = json.load(open(sys.argv[1]))
t = json.load(open(sys.argv[2]))
runs = {}
for b in h["benchmarks"]:
    if b.get("run_type") != "iteration":
        continue
    name = b["run_name"].replace("/real_time", "")
    runs.setdefault(name, []).append((b["real_time"], b["GFLOPS"]))
sgemm = max(g for _, g in runs.get("sgemm/2048", [(0, 0)]))
print(f"torch {t['torch']}, {t['threads']} threads; hpdl sgemm/2048 best {sgemm:.1f} GFLOP/s")
print(f"{'benchmark':28s} {'hpdl ms min/med':>17s} {'torch ms min/med':>17s} {'hpdl GF/s':>9s} {'torch GF/s':>10s} {'ratio':>6s} {'of sgemm':>8s}")
for name, rs in runs.items():
    ms = [r[0] for r in rs]
    gf = max(r[1] for r in rs)
    p = t["results"].get(name)
    if not p:
        continue
    ratio = p["min_ms"] / min(ms)
    print(f"{name:28s} {min(ms):8.3f}/{statistics.median(ms):8.3f} {p['min_ms']:8.3f}/{p['median_ms']:8.3f} "
          f"{gf:9.1f} {p['gflops_max']:10.1f} {ratio:6.2f} {gf / sgemm if sgemm else 0:8.2f}")
PY
