#!/usr/bin/env bash
# PINN training speed, hpdl against PyTorch (bench/RESULTS.md): the Adam phase
# of hpdl_pinn (no L-BFGS) and pinn_torch_peer.py, alternated, one thread each;
# the peer with the larger glibc malloc thresholds the other peers get.
#   bench/physics/run.sh [BUILD_DIR] [REPEATS]
set -euo pipefail
build=${1:-build}; repeats=${2:-3}
here=$(dirname "$0")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
for problem in poisson_1d poisson_2d; do
  steps=$([[ $problem == poisson_1d ]] && echo 2000 || echo 1000)
  for r in $(seq "$repeats"); do
    h=$("$build/bin/hpdl_pinn" "$problem" --steps "$steps" --lbfgs 0 | grep "relative L2 error")
    t=$(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
      /usr/bin/python3 "$here/pinn_torch_peer.py" "$problem" "$steps")
    hs=$(sed -n 's/.*, \([0-9.]*\) s$/\1/p' <<<"$h")
    ts=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' <<<"$t")
    echo "$problem run $r: hpdl $hs s, torch $ts s, speed ratio (torch time / hpdl time) $(awk -v a="$ts" -v b="$hs" 'BEGIN { printf "%.2f", a / b }')"
    echo "  $h"
    echo "  $t"
  done
done
