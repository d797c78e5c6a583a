#!/usr/bin/env bash
# ViT-tiny on Fashion-MNIST, one epoch, hpdl vs PyTorch in one run, alternating
# REPEATS times; prints each side's training samples/s (min / median), the
# ratio of medians, and test accuracy after the epoch.
# Usage, from the repo root after building hpdl_vit_bench (-DHPDL_BUILD_BENCH=ON):
#   bench/e2e/vit_run.sh [threads=2] [repeats=1] [max_steps=0 (whole epoch)]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; repeats=${2:-1}; steps=${3:-0}
out=$(mktemp)
for r in $(seq "$repeats"); do
  OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bench/hpdl_vit_bench "$threads" "$steps" | tee -a "$out"
  # The tuned peer, as run.sh: one thread pool (OpenBLAS single-threaded), no page-fault churn from glibc.
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \
    MALLOC_TOP_PAD_=268435456 /usr/bin/python3 bench/e2e/vit_torch_peer.py "$threads" "$steps" | tee -a "$out"
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
h = sorted(r["train_samples_per_s"] for r in rows if r["framework"] == "hpdl")
p = sorted(r["train_samples_per_s"] for r in rows if r["framework"] == "pytorch")
acc = {f: [r["test_accuracy"] for r in rows if r["framework"] == f] for f in ("hpdl", "pytorch")}
print("| model | steps | hpdl samples/s (min / median) | PyTorch samples/s (min / median) | ratio (median) | test acc hpdl / PyTorch |")
print("|---|---|---|---|---|---|")
print(f"| vit_tiny | {rows[0]['steps']} | {h[0]:.0f} / {statistics.median(h):.0f} | {p[0]:.0f} / {statistics.median(p):.0f} "
      f"| {statistics.median(h) / statistics.median(p):.2f} | {max(acc['hpdl']):.4f} / {max(acc['pytorch']):.4f} |")
PY
rm -f "$out"
