#!/usr/bin/env bash
# Activation checkpointing, hpdl vs PyTorch (torch.utils.checkpoint): a ViT on
# Fashion-MNIST for a few steps with every encoder layer checkpointed or not.
# Prints one table row per (framework, checkpointing): samples/s, peak RSS, and
# for hpdl the allocator's peak of live tensor bytes.
# Usage, from the repo root after building hpdl_cli:
#   bench/e2e/ckpt_run.sh [threads=2] [steps=5] [batch=128] [patch=2] [dim=64] [depth=6] [heads=4]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; steps=${2:-5}; batch=${3:-128}; patch=${4:-2}; dim=${5:-64}; depth=${6:-6}; heads=${7:-4}
tmp=$(mktemp -d)
echo "| framework | checkpointing | steps | samples/s | peak RSS MiB | peak live tensors MiB | final loss |"
echo "|---|---|---|---|---|---|---|"
for ck in false true; do
  OMP_NUM_THREADS=$threads OMP_PROC_BIND=false build/bin/hpdl train examples/fashion_mnist/vit.toml \
    --set model.patch_size=$patch --set model.dim=$dim --set model.depth=$depth --set model.heads=$heads \
    --set data.batch_size=$batch --set train.max_steps=$steps --set train.threads=$threads --set data.workers=1 \
    --set train.log_every=1 --set train.activation_checkpointing=$ck --set train.run_dir=$tmp/hpdl_$ck \
    >$tmp/hpdl_$ck.log 2>&1
  /usr/bin/python3 - "$tmp/hpdl_$ck/summary.json" "$ck" "$steps" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| hpdl | {sys.argv[2]} | {sys.argv[3]} | {s['train_samples_per_s']:.1f} | {s['peak_rss_mb_per_rank'][0]:.0f} "
      f"| {s['peak_tensor_memory_mb']:.0f} | {s['final_train_loss']:.4f} |")
PY
  on=$([[ $ck == true ]] && echo on || echo off)
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/e2e/ckpt_torch_peer.py \
    "$threads" "$steps" "$batch" "$patch" "$dim" "$depth" "$heads" $on >$tmp/torch_$on.json
  /usr/bin/python3 - "$tmp/torch_$on.json" "$ck" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read())
print(f"| PyTorch {r['torch']} | {sys.argv[2]} | {r['steps']} | {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} | - "
      f"| {r['losses'][-1]:.4f} |")
PY
done
rm -rf "$tmp"
