#!/usr/bin/env bash
# The vit example (examples/fashion_mnist/vit.toml: width 64, 4 encoder layers,
# 139,018 parameters) on 4 ranks, one thread each, 30 steps, split six ways:
# data parallel, 4 pipeline stages, tensor parallel over 4, 2 stages x 2
# tensor-parallel ranks (the model axes of the 3-D grid), 2 tensor-parallel
# ranks x 2 replicas, and ZeRO-3 over 4 ranks (data parallel with parameters,
# gradients and optimizer state sharded). Prints a Markdown table per repeat: samples/s (from
# summary.json), global batch, parameters on rank 0, AdamW state and peak RSS
# per rank (from the log).
#
#   bench/dist/vit_grid.sh [BUILD_DIR] [REPEATS]      # defaults: build 2
# (as root, export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 first)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}; repeats=${2:-2}
hpdl=$root/$build/bin/hpdl
[[ -x $hpdl ]] || { echo "vit_grid: no hpdl binary at $hpdl" >&2; exit 1; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
m4="--set train.micro_batches=4 --set train.pipeline_schedule=1f1b"
configs=("data parallel x 4|"
         "4 stages (M=4 1F1B)|--set train.pipeline_stages=4 $m4"
         "tensor parallel 4|--set train.tensor_parallel=4"
         "2 stages x tensor parallel 2 (M=4 1F1B)|--set train.pipeline_stages=2 --set train.tensor_parallel=2 $m4"
         "tensor parallel 2 x 2 replicas|--set train.tensor_parallel=2"
         "ZeRO-3 x 4|--set train.shard_optimizer=true --set train.zero_stage=3")
for rep in $(seq "$repeats"); do
  echo "repeat $rep"
  echo "| split (4 ranks) | global batch | samples/s | parameters on rank 0 | AdamW state per rank (MiB) | peak RSS per rank (MiB) |"
  echo "|---|---|---|---|---|---|"
  i=0
  for c in "${configs[@]}"; do
    name=${c%%|*}; args=${c#*|}; dir=$out/run_${rep}_$i; i=$((i + 1))
    # shellcheck disable=SC2086
    mpirun --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 "$hpdl" train "$root/examples/fashion_mnist/vit.toml" \
      $args --set train.max_steps=30 --set data.workers=1 --set train.eval_every_epochs=0 --set train.run_dir="$dir" \
      >"$dir.log" 2>&1 || { echo "vit_grid: $name failed: $(tail -3 "$dir.log")" >&2; exit 1; }
    python3 - "$dir/summary.json" "$dir.log" "$name" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1])); log = open(sys.argv[2]).read()
state = re.search(r"optimizer state per rank: ([0-9., ]+) MiB", log).group(1)
rss = re.search(r"peak RSS per rank: ([0-9., ]+) MiB", log).group(1)
replicas = 4 // (s.get("pipeline_stages", 1) * s.get("tensor_parallel", 1))
print(f"| {sys.argv[3]} | {256 * replicas} | {s['train_samples_per_s']:.0f} | {s['parameters_per_rank']:,} | {state} | {rss} |")
PY
  done
done
