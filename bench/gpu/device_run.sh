#!/usr/bin/env bash
# The whole GPU check in one call on the lent machine (see docs/gpu.md): unpacks
# the carried libraries, runs the CUDA tests, then the end-to-end training
# benchmark of hpdl and of the PyTorch peer, each under `nvidia-smi dmon`
# (utilization samples, one per second). Everything lands in $OUT.
# Usage, from the checkout root on the device, after bench/gpu/stage_devcarry.sh here:
#   bench/gpu/device_run.sh CASES MATHS [GTEST_FILTER]
#   e.g. bench/gpu/device_run.sh resnet20:512,resnet50:128 fp32,bf16 '*'
# Environment: CLI_PRECISION=bf16,fp16 also trains LeNet-5 from the CLI (CLI_EXTRA: more --set options,
# CLI_ENV: environment settings for it, e.g. "HPDL_CUDA_DEFERRED_CHECKS=1"). AB="name=VAR=1 VAR2=1;..." also
# runs hpdl once per variant with those environment settings (the paths still off by default), as ratios to
# the same peer run; GRAPH_AB=1 is AB="graph=HPDL_CUDNN_GRAPH=1".
#   e.g. AB="graph=HPDL_CUDNN_GRAPH=1;fused=HPDL_CUDA_FUSED_RESIDUAL=1;both=HPDL_CUDNN_GRAPH=1 HPDL_CUDA_FUSED_RESIDUAL=1"
set -uo pipefail
cases=${1:-resnet20:512,resnet50:128}; maths=${2:-fp32,bf16}; filter=${3:-*}
OUT=${OUT:-/tmp/hpdl_out}; mkdir -p "$OUT"
cd .devcarry || exit 1
mkdir -p /tmp/d && tar xJf deps.tar.xz -C /tmp/d
export LD_LIBRARY_PATH=$PWD/bin:/tmp/d:/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -x bin/hpdl ] && bin/hpdl info | tee "$OUT/info.txt"
if [ "$filter" != "none" ]; then
  OMP_NUM_THREADS=8 timeout 300 bin/hpdl_cuda_tests --gtest_filter="$filter" > "$OUT/tests.log" 2>&1
  echo "tests exit $?"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|Failure|differ" "$OUT/tests.log" | head -60
fi
# Training from the CLI (when staged): LeNet-5 on Fashion-MNIST in bf16, the README's job on the GPU.
# With CLI_EXTRA or CLI_ENV, each precision trains twice: as is, then with those settings.
if [ -x bin/hpdl ] && [ -d data ] && [ -n "${CLI_PRECISION:-}" ]; then
  for prec in ${CLI_PRECISION//,/ }; do
    for variant in plain tuned; do
      [ $variant = tuned ] && [ -z "${CLI_EXTRA:-}${CLI_ENV:-}" ] && continue
      name=lenet5_${prec}_$variant; venv=(); vextra=()
      [ $variant = tuned ] && venv=(${CLI_ENV:-}) && vextra=(${CLI_EXTRA:-})
      env "${venv[@]}" bin/hpdl train examples/fashion_mnist/lenet5.toml --set train.device=cuda \
        --set train.precision=$prec --set data.path=$PWD/data --set train.run_dir="$OUT/$name" "${vextra[@]}" \
        > "$OUT/$name.log" 2>&1
      echo "$name exit $?: $(grep -o 'test accuracy [0-9.]*%.*samples/s' "$OUT/$name.log" | tail -1)"
    done
  done
fi
[ "$cases" = "none" ] && exit 0
dmon() { nvidia-smi dmon -s u -d 1 > "$OUT/dmon_$1.txt" 2>&1 & echo $!; }
p=$(dmon hpdl); bin/gpu_e2e "$cases" "$maths" | tee "$OUT/hpdl.jsonl"; kill "$p"
p=$(dmon pytorch); python3 py/gpu/torch_gpu_peer.py "$cases" "$maths" --hpdl "$OUT/hpdl.jsonl" | tee "$OUT/peer.txt"
kill "$p"
# A/B variants: hpdl again with each variant's environment, as ratios to the same peer run.
[ -n "${GRAPH_AB:-}" ] && AB="graph=HPDL_CUDNN_GRAPH=1${AB:+;$AB}"
IFS=';' read -ra variants <<< "${AB:-}"
for v in "${variants[@]}"; do
  name=${v%%=*}; settings=${v#*=}
  p=$(dmon "hpdl_$name"); env $settings bin/gpu_e2e "$cases" "$maths" | tee "$OUT/hpdl_$name.jsonl"; kill "$p"
  python3 - "$OUT/hpdl.jsonl" "$OUT/hpdl_$name.jsonl" "$OUT/peer.txt" "$name ($settings)" <<'PY'
import json, sys
def rows(f):
    return [json.loads(l) for l in open(f) if l.startswith("{")]
peer = {(r["model"], r["batch"], r["math"]): r["train_images_per_s"] for r in rows(sys.argv[3])}
base = {(r["model"], r["batch"], r["math"]): r["train_images_per_s"] for r in rows(sys.argv[1])}
for r in rows(sys.argv[2]):
    k = (r["model"], r["batch"], r["math"])
    if k in peer:
        print(f"{sys.argv[4]}: {k[0]} b{k[1]} {k[2]}: {r['train_images_per_s']:.0f} img/s = "
              f"{r['train_images_per_s'] / peer[k]:.2f}x torch (default paths {base.get(k, 0) / peer[k]:.2f}x), "
              f"{r.get('graph_plans')} graph plans, {r.get('graph_unsupported')} left to legacy")
PY
done
for d in "$OUT"/dmon_*.txt; do
  f=$(basename "$d" .txt); f=${f#dmon_}
  awk -v f=$f '$1 !~ /^#/ && $2+0 > 0 {n++; s += $2} END {if (n) printf "%s: %d busy samples, mean sm %.0f%%\n", f, n, s/n}' \
    "$d"
done
