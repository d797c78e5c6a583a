#!/usr/bin/env bash
# Checkpoint writes inside a training run: how long they hold training up.
# hpdl trains a model (default vgg16_bn on Fashion-MNIST: a 118 MB checkpoint
# with SGD momentum) for STEPS steps with a checkpoint every EVERY steps,
# train.checkpoint_async off and on, alternated REPEATS times; summary.json's
# checkpoint_seconds is rank 0's time inside checkpointing (the synchronous
# writes with their fsyncs, or the snapshots and waits of the background
# writer, including the wait for the last write at the end). The peer is
# torch.save of the same tensors, blocking as a training loop calls it, with
# and without os.fsync (bench/e2e/save_torch_peer.py). Prints a table of ms
# per checkpoint (min / median over the repeats) and the runs' wall times.
# Usage, from the repo root after building hpdl_cli:
#   bench/e2e/save_run.sh [model=vgg16_bn] [steps=30] [every=5] [repeats=3] [threads=2] [batch=8]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-vgg16_bn}; steps=${2:-30}; every=${3:-5}; repeats=${4:-3}; threads=${5:-2}; batch=${6:-8}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hpdl_save_bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
rows=$tmp/rows.jsonl
for rep in $(seq 1 "$repeats"); do
  for async in false true; do
    run=$tmp/run_${async}_$rep
    OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bin/hpdl train examples/fashion_mnist/resnet20.toml \
      --set model.name="$model" --set data.batch_size="$batch" --set train.threads="$threads" --set data.workers=1 \
      --set train.max_steps="$steps" --set train.checkpoint_every_steps="$every" --set train.eval_every_epochs=0 \
      --set train.checkpoint_async=$async --set train.run_dir="$run" >"$run.log" 2>&1 \
      || { echo "hpdl run failed: $(tail -3 "$run.log")" >&2; exit 1; }
    /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({'who': 'hpdl', 'async': sys.argv[2], \
'ms': 1e3 * s['checkpoint_seconds'] / s['checkpoints_saved'], 'n': s['checkpoints_saved'], 'wall': s['seconds']}))" \
      "$run/summary.json" "$async" >>"$rows"
  done
  ckpt=$(ls "$tmp/run_false_$rep"/checkpoints/step-*.safetensors | tail -1)
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/e2e/save_torch_peer.py "$ckpt" "$tmp/peer" 3 \
    | /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); import statistics as st; \
print(json.dumps({'who': 'torch', 'bytes': d['bytes'], 'save': st.median(d['save_ms']), 'fsync': st.median(d['save_fsync_ms'])}))" >>"$rows"
  rm -rf "$tmp"/run_*_"$rep"
done
/usr/bin/python3 - "$rows" "$model" "$every" "$steps" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def mm(v, d=0): return f"{min(v):.{d}f} / {statistics.median(v):.{d}f}"
sync = [r for r in rows if r["who"] == "hpdl" and r["async"] == "false"]
asyn = [r for r in rows if r["who"] == "hpdl" and r["async"] == "true"]
peer = [r for r in rows if r["who"] == "torch"]
print(f"{sys.argv[2]}, {sys.argv[4]} steps, a checkpoint every {sys.argv[3]} steps ({sync[0]['n']} per run), "
      f"{peer[0]['bytes'] / 2**20:.0f} MiB of tensors")
print("| writer | ms per checkpoint holding training up (min / median) | run wall s (min / median) |")
print("|---|---|---|")
print(f"| hpdl, synchronous (atomic, fsync) | {mm([r['ms'] for r in sync])} | {mm([r['wall'] for r in sync], 1)} |")
print(f"| hpdl, train.checkpoint_async | {mm([r['ms'] for r in asyn])} | {mm([r['wall'] for r in asyn], 1)} |")
print(f"| PyTorch torch.save | {mm([r['save'] for r in peer])} | - |")
print(f"| PyTorch torch.save + os.fsync | {mm([r['fsync'] for r in peer])} | - |")
ratio = statistics.median([r['fsync'] for r in peer]) / statistics.median([r['ms'] for r in asyn])
print(f"\ntorch.save + fsync / hpdl async (medians): {ratio:.1f}x; "
      f"torch.save / hpdl async: {statistics.median([r['save'] for r in peer]) / statistics.median([r['ms'] for r in asyn]):.1f}x")
PY
