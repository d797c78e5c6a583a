#!/usr/bin/env bash
# Recurrent-layer training step (forward + backward), hpdl vs PyTorch, in one
# run, alternating ROUNDS times (each round: REPS timed repetitions per side);
# prints min/median sequences/s over all repetitions and the ratio of medians.
# Usage, from the repo root after building:
#   bench/e2e/rnn_run.sh [threads=2] [configs=lstm_small,lstm_big] [rounds=3] [reps=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; configs=${2:-lstm_small,lstm_big}; rounds=${3:-3}; reps=${4:-3}
out=$(mktemp)
for r in $(seq "$rounds"); do
  OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bench/hpdl_rnn_bench "$configs" "$reps" 1.0 >>"$out"
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/e2e/rnn_torch_peer.py "$configs" "$reps" 1.0 >>"$out"
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
configs = []
for r in rows:
    if r["config"] not in configs:
        configs.append(r["config"])
print("| config | hpdl seq/s (min / median) | PyTorch seq/s (min / median) | ratio (median) |")
print("|---|---|---|---|")
for c in configs:
    h = sorted(x for r in rows if r["config"] == c and r["framework"] == "hpdl" for x in r["samples_per_s"])
    p = sorted(x for r in rows if r["config"] == c and r["framework"] == "pytorch" for x in r["samples_per_s"])
    hm, pm = statistics.median(h), statistics.median(p)
    print(f"| {c} | {h[0]:.0f} / {hm:.0f} | {p[0]:.0f} / {pm:.0f} | {hm / pm:.2f} |")
PY
rm -f "$out"
