#!/usr/bin/env bash
# Data-parallel DCGAN quality at equal steps (docs/gan.md, "Data-parallel training"): one rank of
# batch 64 against two ranks of 32 (the same global batch) and two of 64, one thread per rank, each
# seed, all scored by one classifier trained first. Prints each run's score and training time.
#   bench/gan/quality_ranks.sh [BUILD_DIR] [OUT_DIR] [STEPS] [SEEDS...]   (default: build /tmp/gan_ranks 1200 0 1)
set -euo pipefail
build=$(realpath "${1:-build}"); out=${2:-/tmp/gan_ranks}; steps=${3:-1200}
shift $(( $# < 3 ? $# : 3 ))
seeds=("$@"); [[ ${#seeds[@]} -gt 0 ]] || seeds=(0 1)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
bin=$build/bin/hpdl_dcgan
mkdir -p "$out"; cd "$out"
"$bin" --threads 1 --steps 1 --classifier-steps 600 --out classifier >classifier.log 2>&1
grep "real test images" classifier.log
mpi=(mpirun --oversubscribe --bind-to none -np 2)
for seed in "${seeds[@]}"; do
  for run in "1 64" "2 32" "2 64"; do
    read -r ranks batch <<<"$run"
    launch=(); [[ $ranks -gt 1 ]] && launch=("${mpi[@]}")
    name=r${ranks}_b${batch}_s$seed
    "${launch[@]}" "$bin" --threads 1 --steps "$steps" --batch "$batch" --seed "$seed" \
      --classifier classifier/classifier.safetensors --out "$name" >"$name.log" 2>&1
    echo "$ranks rank(s) x batch $batch, seed $seed: $(grep -h '^trained [0-9]* steps' "$name.log"); $(grep -h '^trained generator:' "$name.log")"
  done
done
