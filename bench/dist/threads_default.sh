#!/usr/bin/env bash
# 2 data-parallel ranks under `mpirun --bind-to none` (every rank may run on
# every core) with four ways of choosing the threads per rank:
#   all cores    OMP_NUM_THREADS = the cores (what OpenMP did by default before
#                design decision 86: a thread per core in every rank)
#   default      neither OMP_NUM_THREADS nor train.threads: the ranks split the
#                cores (cores / 2 each)
#   env          OMP_NUM_THREADS = cores / 2
#   config       train.threads = cores / 2, OMP_NUM_THREADS unset (before
#                decision 86 the communicator's thread then kept a team of
#                one thread per core)
# Training samples/s from summary.json, the modes alternated REPEATS times.
#
#   bench/dist/threads_default.sh [BUILD_DIR] [REPEATS] [MODELS]   # defaults: build 3 mlp,lenet5,resnet20
# (as root, export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 first)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}; repeats=${2:-3}; models=${3:-mlp,lenet5,resnet20}
hpdl=$root/$build/bin/hpdl
[[ -x $hpdl ]] || { echo "threads_default: no hpdl binary at $hpdl" >&2; exit 1; }
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc); half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
echo "$cores cores, 2 ranks"
echo "| model | repeat | all cores ($cores) | default | env ($half) | config ($half) |"
echo "|---|---|---|---|---|---|"
for model in ${models//,/ }; do
  steps=300; [[ $model == resnet20 ]] && steps=40
  for rep in $(seq "$repeats"); do
    row="| $model | $rep |"
    for mode in all default env config; do
      mpi=(); set_args=()
      case $mode in
        all) mpi=(-x "OMP_NUM_THREADS=$cores") ;;
        env) mpi=(-x "OMP_NUM_THREADS=$half") ;;
        config) set_args=(--set "train.threads=$half") ;;
      esac
      dir=$out/${model}_${mode}_$rep
      env -u OMP_NUM_THREADS mpirun --bind-to none -np 2 "${mpi[@]}" "$hpdl" train \
        "$root/examples/fashion_mnist/$model.toml" --set train.max_steps=$steps --set data.workers=1 \
        --set train.eval_every_epochs=0 --set train.run_dir="$dir" "${set_args[@]}" >"$dir.log" 2>&1 \
        || { echo "threads_default: $model $mode failed: $(tail -3 "$dir.log")" >&2; exit 1; }
      row+=" $(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['train_samples_per_s']:.0f} ({s['threads']})\")" "$dir/summary.json") |"
    done
    echo "$row"
  done
done
