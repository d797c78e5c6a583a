#!/usr/bin/env bash
# Pipeline stages balanced by parameters (the default) against balanced by
# time (train.pipeline_balance = "time": each layer's forward and backward
# timed on one micro-batch at start-up). 2 ranks (one stage each), one thread
# per rank, so each stage has a core of its own as on a cluster; GPipe with 4
# micro-batches of 32, 30 steps. The runs alternate, REPEATS times. Prints
# one Markdown row per run: the cut, the stage times the profile predicts for
# both balances (ms per micro-batch, from the log), and the training rate
# (samples/s from summary.json, which leaves out start-up and so the
# profiling itself).
#
#   bench/dist/pipeline_balance.sh [BUILD_DIR] [REPEATS] [MODELS]   # defaults: build 3 resnet20,vgg11_bn
# (as root, export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 first)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}; repeats=${2:-3}; models=${3:-resnet20,vgg11_bn}
hpdl=$root/$build/bin/hpdl
[[ -x $hpdl ]] || { echo "pipeline_balance: no hpdl binary at $hpdl" >&2; exit 1; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
echo "| model | balance | repeat | stages begin at | stage ms by time / by parameters (profiled) | samples/s |"
echo "|---|---|---|---|---|---|"
for model in ${models//,/ }; do
  for rep in $(seq "$repeats"); do
    for balance in parameters time; do
      dir=$out/${model}_${balance}_$rep
      mpirun --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$root/examples/fashion_mnist/resnet20.toml" \
        --set model.name="$model" --set train.pipeline_stages=2 --set train.micro_batches=4 \
        --set train.pipeline_balance="$balance" --set train.max_steps=30 --set data.workers=1 \
        --set train.eval_every_epochs=0 --set train.run_dir="$dir" >"$dir.log" 2>&1 \
        || { echo "pipeline_balance: $model $balance failed: $(tail -3 "$dir.log")" >&2; exit 1; }
      python3 - "$dir/summary.json" "$dir.log" "$model" "$balance" "$rep" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1])); log = open(sys.argv[2]).read()
cut = re.search(r"stages begin at layers ([0-9, ]+ of [0-9]+)", log).group(1)
t = re.search(r"stages take ([0-9., ]+) ms per micro-batch of [0-9]+ \(balanced by parameters: ([0-9., ]+) ms\)", log)
prof = f"{t.group(1)} / {t.group(2)}" if t else "(not profiled)"
print(f"| {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {cut} | {prof} | {s['train_samples_per_s']:.0f} |")
PY
    done
  done
done
