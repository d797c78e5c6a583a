#!/usr/bin/env bash
# DQN training speed on CartPole, hpdl against PyTorch (bench/RESULTS.md): a
# fixed number of environment steps (one update per step after the first
# 1,000), alternated, one thread each. hpdl_dqn stops early only if it solves
# the task, so STEPS stays below the ~20,000 it needs.
#   bench/rl/run.sh [BUILD_DIR] [REPEATS] [STEPS]
set -euo pipefail
build=${1:-build}; repeats=${2:-3}; steps=${3:-8000}
here=$(dirname "$0")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
for r in $(seq "$repeats"); do
  h=$("$build/bin/hpdl_dqn" --quiet --max-steps "$steps" | grep -E "^(not solved|solved)")
  t=$(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
      /usr/bin/python3 "$here/dqn_torch_peer.py" "$steps")
  hs=$(sed -n 's/.*, \([0-9.]*\) s.*/\1/p' <<<"$h")
  ts=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' <<<"$t")
  echo "run $r: hpdl $hs s, torch $ts s, speed ratio (torch time / hpdl time) $(awk -v a="$ts" -v b="$hs" 'BEGIN { printf "%.2f", a / b }')"
  echo "  $h"
  echo "  $t"
done
