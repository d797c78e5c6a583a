#!/usr/bin/env bash
# PowerSGD against plain data parallelism, hpdl and PyTorch side by side: the
# mlp example (535,818 parameters) for one epoch of Fashion-MNIST on 2 ranks
# of one thread each, plain and with PowerSGD at rank R from step 2 (hpdl:
# train.powersgd_rank; PyTorch 1.13: DistributedDataParallel over gloo with
# its powerSGD_hook, bench/dist/powersgd_torch_peer.py). Prints one Markdown
# row per run: training samples/s, test accuracy, and for hpdl the gradient
# MiB all-reduced per rank over the epoch (summary.json).
#
# With RATE (e.g. 1gbit; root only) both sides talk over TCP on the loopback
# device shaped to that rate by `tc ... tbf` (OpenMPI: --mca btl tcp,self on
# lo; gloo uses TCP on 127.0.0.1 anyway), a stand-in for Ethernet between
# nodes; the shaping is removed on exit.
#
#   bench/dist/powersgd.sh [BUILD_DIR] [REPEATS] [RANK] [RATE]   # defaults: build 3 4 (no shaping)
# (as root, export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 first)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
build=${1:-build}; repeats=${2:-3}; R=${3:-4}; rate=${4:-}
hpdl=$root/$build/bin/hpdl
[[ -x $hpdl ]] || { echo "powersgd: no hpdl binary at $hpdl" >&2; exit 1; }
out=$(mktemp -d)
mpi_net=()
if [[ -n $rate ]]; then
  tc qdisc add dev lo root tbf rate "$rate" burst 256kb latency 50ms \
    || { echo "powersgd: cannot shape lo to $rate (tc needs root)" >&2; exit 1; }
  trap 'tc qdisc del dev lo root 2>/dev/null; rm -rf "$out"' EXIT
  mpi_net=(--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo)
  echo "loopback shaped to $rate; MPI over TCP"
else
  trap 'rm -rf "$out"' EXIT
fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
peer() {  # $1: PowerSGD rank (0: plain); rank 0's JSON line
  local port=$((29500 + RANDOM % 1000))
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port /usr/bin/python3 "$here/powersgd_torch_peer.py" 1 "$1" >/dev/null &
  RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port /usr/bin/python3 "$here/powersgd_torch_peer.py" 1 "$1"
  wait
}
echo "| repeat | run | samples/s | test accuracy | gradient MiB all-reduced |"
echo "|---|---|---|---|---|"
for rep in $(seq "$repeats"); do
  for r in 0 "$R"; do
    dir=$out/h_${rep}_$r
    mpirun --bind-to none -np 2 "${mpi_net[@]}" -x OMP_NUM_THREADS=1 "$hpdl" train "$root/examples/fashion_mnist/mlp.toml" \
      --set train.epochs=1 --set data.workers=1 --set train.powersgd_rank="$r" --set train.powersgd_start_step=2 \
      --set train.run_dir="$dir" >"$dir.log" 2>&1 || { echo "powersgd: hpdl rank $r failed: $(tail -3 "$dir.log")" >&2; exit 1; }
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"| {sys.argv[2]} | hpdl {'plain' if sys.argv[3]=='0' else 'PowerSGD rank '+sys.argv[3]} | {s['train_samples_per_s']:.0f} | {100*s['test_accuracy']:.2f}% | {s['sync_allreduce_mb']:.1f} |\")" \
      "$dir/summary.json" "$rep" "$r"
    peer "$r" | python3 -c "import json,sys; s=json.loads(sys.stdin.readline()); print(f\"| {sys.argv[1]} | PyTorch {'plain' if sys.argv[2]=='0' else 'PowerSGD rank '+sys.argv[2]} | {s['train_samples_per_s']:.0f} | {100*s['test_accuracy']:.2f}% | |\")" "$rep" "$r"
  done
done
