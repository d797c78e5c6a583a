#!/usr/bin/env bash
# DCGAN training-step speed on Fashion-MNIST, hpdl against PyTorch
# (bench/RESULTS.md): `hpdl_dcgan --bench-steps` and dcgan_torch_peer.py, the
# same networks, loss, Adam and batch of 64, STEPS timed steps after 10 warm-up
# steps, alternated REPEATS times per thread count; prints each run and the
# min / median of the ratio PyTorch time / hpdl time (> 1: hpdl is faster).
# The peer gets the larger glibc malloc thresholds the other peers get.
#   bench/gan/run.sh [BUILD_DIR] [REPEATS] [STEPS] [THREADS...]   (default: build 5 100 1 2)
# HPDL_LAYOUT=nchw runs hpdl with row-major activations (default nhwc, channels-last).
# HPDL_RANKS=R times data-parallel training on R ranks of THREADS threads each, batch 64 per rank
# (design decision 79): hpdl_dcgan under mpirun against R peer processes in one gloo process
# group with DistributedDataParallel; the time is rank 0's.
set -euo pipefail
build=${1:-build}; repeats=${2:-5}; steps=${3:-100}
shift $(( $# < 3 ? $# : 3 ))
threads=("$@"); [[ ${#threads[@]} -gt 0 ]] || threads=(1 2)
here=$(dirname "$0")
ranks=${HPDL_RANKS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch=(); [[ $ranks -gt 1 ]] && launch=(mpirun --oversubscribe --bind-to none -np "$ranks")
peer() {  # the peer on $ranks processes; prints rank 0's line
  local port=$((29500 + RANDOM % 1000)) r out=()
  for ((r = ranks - 1; r >= 0; r--)); do
    if [[ $r -gt 0 ]]; then
      RANK=$r WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$@" >/dev/null &
    else
      RANK=0 WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$@"
    fi
  done
  wait
}
for t in "${threads[@]}"; do
  export OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t
  ratios=()
  for r in $(seq "$repeats"); do
    h=$("${launch[@]}" "$build/bin/hpdl_dcgan" --bench-steps "$steps" --threads "$t" --layout "${HPDL_LAYOUT:-nhwc}" | grep "^hpdl dcgan:")
    p=$(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
        peer /usr/bin/python3 "$here/dcgan_torch_peer.py" "$t" "$steps" | grep "^torch dcgan:")
    hs=$(sed -n 's/.* steps in \([0-9.]*\) s .*/\1/p' <<<"$h")
    ps=$(sed -n 's/.* steps in \([0-9.]*\) s .*/\1/p' <<<"$p")
    ratio=$(awk -v a="$ps" -v b="$hs" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    echo "ranks $ranks threads $t run $r: hpdl $hs s, torch $ps s, ratio (torch time / hpdl time) $ratio"
    echo "  $h"
    echo "  $p"
  done
  printf '%s\n' "${ratios[@]}" | sort -g | awk -v t="$t" '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "ranks '"$ranks"' threads %s: ratio min %.2f median %.2f max %.2f over %d runs\n", t, v[1], m, v[NR], NR }'
done
