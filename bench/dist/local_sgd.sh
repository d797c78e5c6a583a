#!/usr/bin/env bash
# Local SGD (train.local_sgd_steps = H) against synchronous data parallel
# (H = 0) at 2 ranks, 1 thread each: test accuracy after the same epochs,
# model-synchronization allreduces and MiB per epoch per rank (gradient
# buckets, or averaging points), and wall time of the whole run (training and
# the per-epoch evaluation; min / median over the repeats). Reads summary.json
# of every run; prints a Markdown table.
# Usage: bench/dist/local_sgd.sh [CONFIG=examples/fashion_mnist/mlp.toml] [EPOCHS=3] [REPEATS=3] [H values...]
set -euo pipefail
config=${1:-examples/fashion_mnist/mlp.toml}; epochs=${2:-3}; repeats=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
hs=("$@"); [[ ${#hs[@]} -gt 0 ]] || hs=(0 2 8 32)
hpdl=${HPDL:-$(pwd)/build/bin/hpdl}
mpirun=${MPIEXEC:-mpirun}
work=$(mktemp -d /tmp/hpdl_local_sgd_bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
for r in $(seq 1 "$repeats"); do  # repeats outermost: a burst of load from elsewhere hits every H alike
  for h in "${hs[@]}"; do
    "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$config" \
      --set train.epochs="$epochs" --set train.threads=1 --set data.workers=1 --set train.checkpoint_every_epochs=0 \
      --set train.local_sgd_steps="$h" --set train.run_dir="$work/h${h}_r$r" >"$work/log_h${h}_r$r" 2>&1 \
      || { echo "run H=$h #$r failed:"; tail -5 "$work/log_h${h}_r$r"; exit 1; }
    grep -q "weights identical on all 2 ranks" "$work/log_h${h}_r$r" || { echo "replica check missing (H=$h)"; exit 1; }
  done
done
python3 - "$work" "$epochs" "$repeats" "${hs[@]}" <<'PY'
import json, statistics, sys
work, epochs, repeats, hs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print("| H | test accuracy (each repeat) | steps per epoch | allreduces per epoch | MiB per epoch per rank | wall s (min / median) | time / sync (min / median) |")
print("|---|---|---|---|---|---|---|")
base = None
for h in hs:
    runs = [json.load(open(f"{work}/h{h}_r{r}/summary.json")) for r in range(1, repeats + 1)]
    t = [s["seconds"] for s in runs]
    tmin, tmed = min(t), statistics.median(t)
    if base is None: base = (tmin, tmed)
    s = runs[0]
    acc = ", ".join(f"{100 * x['test_accuracy']:.2f}%" for x in runs)
    print(f"| {h if h != '0' else '0 (sync)'} | {acc} | {s['steps'] / epochs:.0f} | {s['sync_allreduces'] / epochs:.1f} | "
          f"{s['sync_allreduce_mb'] / epochs:.1f} | {tmin:.1f} / {tmed:.1f} | {tmin / base[0]:.2f} / {tmed / base[1]:.2f} |")
PY
