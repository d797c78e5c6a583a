#!/usr/bin/env bash
# bench/e2e: hpdl and the tuned PyTorch peer on the same models, in one run,
# alternating, REPEATS times; prints min/median samples/s and the ratio, and
# each side's peak RSS (one process per model: training, then inference).
# Usage: bench/e2e/run.sh [threads=2] [models=mlp,lenet5,resnet20] [repeats=3] [precisions=fp32]
# precisions: fp32, bf16 or fp32,bf16 (both, alternating; bf16 = autocast on both sides, CPU bfloat16
# operands with float32 accumulation; the table then also gives hpdl's bf16/fp32 speedup).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; models=${2:-mlp,lenet5,resnet20}; repeats=${3:-3}; precisions=${4:-fp32}
out=$(mktemp)
# One process per model and framework, so that each peak RSS belongs to one model.
for r in $(seq "$repeats"); do
  for m in ${models//,/ }; do
    for prec in ${precisions//,/ }; do
      OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bench/hpdl_e2e "$threads" "$m" "$prec" >>"$out"
      # The tuned peer: one thread pool (OpenBLAS single-threaded), no page-fault churn from glibc.
      OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \
        MALLOC_TOP_PAD_=268435456 /usr/bin/python3 bench/e2e/torch_peer.py "$threads" "$m" "$prec" >>"$out"
    done
  done
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    r.setdefault("precision", "fp32")
models, precs = [], []
for r in rows:
    if r["model"] not in models:
        models.append(r["model"])
    if r["precision"] not in precs:
        precs.append(r["precision"])
both = "fp32" in precs and "bf16" in precs
print("| model | precision | mode | hpdl samples/s (min / median) | PyTorch samples/s (min / median) | ratio (median) |"
      + (" hpdl bf16/fp32 (median) |" if both else ""))
print("|---|---|---|---|---|---|" + ("---|" if both else ""))
rss = {}
def med(m, prec, fw, key):
    return sorted(r[key] for r in rows if r["model"] == m and r["precision"] == prec and r["framework"] == fw)
for m in models:
    for prec in precs:
        for mode in ("train", "infer"):
            key = f"{mode}_samples_per_s"
            h, p = med(m, prec, "hpdl", key), med(m, prec, "pytorch", key)
            hm, pm = statistics.median(h), statistics.median(p)
            f = (lambda v: f"{v:.2f}") if pm < 100 else (lambda v: f"{v:.0f}")
            extra = ""
            if both:
                extra = f" {hm / statistics.median(med(m, 'fp32', 'hpdl', key)):.2f} |" if prec == "bf16" else " |"
            print(f"| {m} | {prec} | {mode} | {f(h[0])} / {f(hm)} | {f(p[0])} / {f(pm)} | {hm / pm:.2f} |" + extra)
    rss[m] = [max(r["max_rss_mb"] for r in rows if r["model"] == m and r["framework"] == f) for f in ("hpdl", "pytorch")]
print()
print("| model | hpdl peak RSS (MB) | PyTorch peak RSS (MB) | ratio |")
print("|---|---|---|---|")
for m, (h, p) in rss.items():
    print(f"| {m} | {h:.0f} | {p:.0f} | {h / p:.2f} |")
PY
rm -f "$out"
