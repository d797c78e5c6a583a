#!/usr/bin/env bash
# PPO training speed, hpdl against PyTorch (bench/RESULTS.md): the same fixed
# number of iterations of the same algorithm and settings (examples/rl/ppo.cpp,
# bench/rl/ppo_torch_peer.py), alternated, one thread each. Prints each run's
# times and ratio, then the ratio's min and median.
#   bench/rl/run_ppo.sh [BUILD_DIR] [REPEATS] [ENV] [ITERATIONS]
set -euo pipefail
build=${1:-build}; repeats=${2:-3}; env=${3:-cartpole}; iterations=${4:-20}
here=$(dirname "$0")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
ratios=()
for r in $(seq "$repeats"); do
  h=$("$build/bin/hpdl_ppo" --env "$env" --iterations "$iterations" --quiet | grep "^trained:")
  t=$(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
      /usr/bin/python3 "$here/ppo_torch_peer.py" "$env" "$iterations")
  hs=$(sed -n 's/.*, \([0-9.]*\) s$/\1/p' <<<"$h")
  ts=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' <<<"$t")
  ratio=$(awk -v a="$ts" -v b="$hs" 'BEGIN { printf "%.2f", a / b }')
  ratios+=("$ratio")
  echo "run $r: hpdl $hs s, torch $ts s, speed ratio (torch time / hpdl time) $ratio"
  echo "  hpdl:  $h"
  echo "  torch: $t"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
  printf "ratio over %d runs: min %.2f, median %.2f\n", NR, v[1], m }'
