#!/usr/bin/env bash
# Data parallelism vs threads on one node: training samples/s of 1 rank x 2
# OpenMP threads against 2 MPI ranks x 1 thread each (same global batch), for
# LeNet-5 and ResNet-20 on Fashion-MNIST; prints a Markdown table from each
# run's summary.json (train_samples_per_s). Run it on a quiet machine.
#
#   bench/dist/throughput.sh                         # 200 steps per run
#   STEPS=5 bench/dist/throughput.sh                 # smoke test of the script
#
# Environment: HPDL (default build/bin/hpdl), STEPS (200), BATCH (global, 128),
# MODELS ("lenet5 resnet20"), OUT (runs/throughput), MPIRUN (mpirun).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
hpdl=${HPDL:-$root/build/bin/hpdl}
steps=${STEPS:-200}
batch=${BATCH:-128}
models=${MODELS:-"lenet5 resnet20"}
out=${OUT:-runs/throughput}
mpirun=${MPIRUN:-mpirun}
[[ -x $hpdl ]] || { echo "throughput: no hpdl binary at $hpdl (build it, or set HPDL=...)" >&2; exit 1; }
(( batch % 2 == 0 )) || { echo "throughput: BATCH must be even (split over 2 ranks)" >&2; exit 1; }
mkdir -p "$out"

common() {  # $1 model, $2 per-rank batch, $3 threads, $4 run dir
  echo train "$root/examples/fashion_mnist/$1.toml" --set "data.batch_size=$2" --set "train.threads=$3" \
    --set "data.workers=1" --set "train.max_steps=$steps" --set "train.checkpoint_every_epochs=0" \
    --set "train.eval_every_epochs=0" --set "train.run_dir=$4"
}
json_value() { sed -n "s/.*\"$2\": *\([-0-9.eE+]*\).*/\1/p" "$1" | head -1; }

echo "| model | 1 rank x 2 threads (samples/s) | 2 ranks x 1 thread (samples/s) | ranks / threads |"
echo "|---|---:|---:|---:|"
for m in $models; do
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=2 "$hpdl" $(common "$m" "$batch" 2 "$out/${m}_r1t2") >"$out/${m}_r1t2.log" 2>&1 \
    || { echo "throughput: $m 1x2 failed; see $out/${m}_r1t2.log" >&2; exit 1; }
  # shellcheck disable=SC2046
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" \
    $(common "$m" $((batch / 2)) 1 "$out/${m}_r2t1") --set train.sync_batchnorm=false >"$out/${m}_r2t1.log" 2>&1 \
    || { echo "throughput: $m 2x1 failed; see $out/${m}_r2t1.log" >&2; exit 1; }
  a=$(json_value "$out/${m}_r1t2/summary.json" train_samples_per_s)
  b=$(json_value "$out/${m}_r2t1/summary.json" train_samples_per_s)
  awk -v m="$m" -v a="$a" -v b="$b" 'BEGIN { printf "| %s | %.0f | %.0f | %.2f |\n", m, a, b, b / a }'
done
echo
echo "global batch $batch, $steps steps each; samples/s from summary.json (whole run, including start-up)."
