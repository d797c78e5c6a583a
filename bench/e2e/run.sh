#!/usr/bin/env bash
# bench/e2e: hpdl and the tuned PyTorch peer on the same models, in one run,
# alternating, REPEATS times; prints min/median samples/s and the ratio, and
# each side's peak RSS (one process per model: training, then inference).
# Usage: bench/e2e/run.sh [threads=2] [models=mlp,lenet5,resnet20] [repeats=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; models=${2:-mlp,lenet5,resnet20}; repeats=${3:-3}
out=$(mktemp)
# One process per model and framework, so that each peak RSS belongs to one model.
for r in $(seq "$repeats"); do
  for m in ${models//,/ }; do
    OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bench/hpdl_e2e "$threads" "$m" >>"$out"
    # The tuned peer: one thread pool (OpenBLAS single-threaded), no page-fault churn from glibc.
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \
      MALLOC_TOP_PAD_=268435456 /usr/bin/python3 bench/e2e/torch_peer.py "$threads" "$m" >>"$out"
  done
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
models = []
for r in rows:
    if r["model"] not in models:
        models.append(r["model"])
print("| model | mode | hpdl samples/s (min / median) | PyTorch samples/s (min / median) | ratio (median) |")
print("|---|---|---|---|---|")
rss = {}
for m in models:
    for mode in ("train", "infer"):
        key = f"{mode}_samples_per_s"
        h = sorted(r[key] for r in rows if r["model"] == m and r["framework"] == "hpdl")
        p = sorted(r[key] for r in rows if r["model"] == m and r["framework"] == "pytorch")
        hm, pm = statistics.median(h), statistics.median(p)
        f = (lambda v: f"{v:.2f}") if pm < 100 else (lambda v: f"{v:.0f}")
        print(f"| {m} | {mode} | {f(h[0])} / {f(hm)} | {f(p[0])} / {f(pm)} | {hm / pm:.2f} |")
    rss[m] = [max(r["max_rss_mb"] for r in rows if r["model"] == m and r["framework"] == f) for f in ("hpdl", "pytorch")]
print()
print("| model | hpdl peak RSS (MB) | PyTorch peak RSS (MB) | ratio |")
print("|---|---|---|---|")
for m, (h, p) in rss.items():
    print(f"| {m} | {h:.0f} | {p:.0f} | {h / p:.2f} |")
PY
rm -f "$out"
