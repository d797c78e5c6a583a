#!/usr/bin/env bash
# ZeRO-1 (train.shard_optimizer), ZeRO-2 (train.zero_stage = 2) and ZeRO-3
# (train.zero_stage = 3): optimizer-state bytes, gradient-bucket bytes (held
# after the last step, and the most held at once during it), parameter bytes
# (held after the last step, and the most at once: ZeRO-3 adds a gathered
# unit), peak RSS and peak tensor memory per rank, and time per step and in
# the optimizer, unsharded vs ZeRO-1 vs ZeRO-2 vs ZeRO-3 (MODES, default
# "off 1 2"; add 3), with AdamW on
# synthetic data (random 3x32x32 images written as .npy), at 2 and 4 ranks.
# One epoch of exactly STEPS steps per run, no checkpoint and no evaluation, so
# the peak RSS is that of training. Times come from the Chrome trace (rank 0):
# a step is forward start to the next forward start; the first two steps are
# warm-up. Prints a Markdown table (min / median over the repeats' steps).
# Usage: bench/dist/zero_memory.sh [MODEL=resnet50] [REPEATS=3] [STEPS=8] [BATCH=8]
# Environment: MODES (default "off 1 2"; "3np" is ZeRO-3 with
# train.zero3_prefetch = false), NPS (rank counts, default "2 4"),
# BUCKET_MB (train.bucket_mb; default: the config's 25).
set -euo pipefail
model=${1:-resnet50}; repeats=${2:-3}; steps=${3:-8}; batch=${4:-8}
hpdl=${HPDL:-$(pwd)/build/bin/hpdl}
mpirun=${MPIEXEC:-mpirun}
work=$(mktemp -d /tmp/hpdl_zero_bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "# synthetic data; every key is set on the command line" >"$work/bench.toml"

# Synthetic .npy data sets: N images [N, 3, 32, 32] uint8 and N int64 labels in 0..9.
make_npy() {
  python3 - "$1" "$2" <<'EOF'
import os, random, struct, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
def npy(path, descr, shape, data):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, ", ".join(map(str, shape)) + ("," if len(shape) == 1 else ""))
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data)
rng = random.Random(1)
for split in ("train", "test"):
    npy(f"{d}/{split}_x.npy", "|u1", (n, 3, 32, 32), bytes(rng.randrange(256) for _ in range(n * 3 * 32 * 32)))
    npy(f"{d}/{split}_y.npy", "<i8", (n,), b"".join(struct.pack("<q", rng.randrange(10)) for _ in range(n)))
EOF
}

# Per-step and optimizer milliseconds of rank 0 from a trace: prints "step_ms_list opt_ms_list".
trace_times() {
  python3 - "$1" <<'EOF'
import json, sys
ev = json.load(open(sys.argv[1]))
ev = ev["traceEvents"] if isinstance(ev, dict) else ev
r0 = [e for e in ev if e.get("pid") == 0 and e.get("ph") == "X"]
fwd = sorted(e["ts"] for e in r0 if e["name"] == "forward")
opt = sorted((e["ts"], e["dur"]) for e in r0 if e["name"] == "optimizer")
step = [(b - a) / 1e3 for a, b in zip(fwd[2:], fwd[3:])]
print(",".join(f"{x:.1f}" for x in step), ",".join(f"{d / 1e3:.1f}" for _, d in opt[2:]))
EOF
}

stats() {  # "min / median" of a comma-separated list
  python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1].split(',') if x]; print(f'{min(v):.0f} / {statistics.median(v):.0f}')" "$1"
}

per_rank() {  # summary.json key $2 (bytes, or MiB with $3 = mb) as "a, b, ..." MiB
  python3 -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; d=1 if sys.argv[3]=='mb' else 2**20; print(', '.join(f'{b/d:.1f}' for b in v))" "$@"
}

echo "| ranks | ZeRO | optimizer state MiB per rank | gradient MiB per rank after the step (peak in it) | parameter MiB per rank after the step (peak in it) | peak RSS MiB per rank | peak tensor MiB per rank | step ms (min / median) | optimizer ms (min / median) |"
echo "|---|---|---|---|---|---|---|---|---|"
# The repeats go round the modes (mode A, B, C, A, B, C, ...), so a change in the machine's load
# falls on every mode alike.
for np in ${NPS:-2 4}; do
  make_npy "$work/data$np" $((np * batch * steps))
  declare -A all_step=() all_opt=() state=() rss=() grads=() params=() tensors=() gwait=()
  for rep in $(seq 1 "$repeats"); do
    for mode in ${MODES:-off 1 2}; do
      shard=true; stage=$mode; prefetch=()
      [[ $mode == off ]] && shard=false stage=1
      [[ $mode == 3np ]] && stage=3 prefetch=(--set train.zero3_prefetch=false)
      run="$work/run_${np}_${mode}_$rep"
      "$mpirun" --oversubscribe --bind-to none -np "$np" -x OMP_NUM_THREADS=1 "$hpdl" train "$work/bench.toml" \
        --set data.dataset=npy --set data.path="$work/data$np" --set data.batch_size="$batch" --set data.workers=1 \
        --set data.mean=[0.5] --set data.std=[0.25] --set model.name="$model" --set model.in_channels=3 \
        --set model.num_classes=10 --set optimizer.name=adamw --set optimizer.lr=0.001 \
        --set optimizer.weight_decay=0.01 --set train.epochs=1 --set train.threads=1 \
        --set train.checkpoint_every_epochs=0 --set train.eval_every_epochs=0 --set train.trace=true \
        ${BUCKET_MB:+--set train.bucket_mb=$BUCKET_MB} --set train.shard_optimizer="$shard" --set train.zero_stage="$stage" "${prefetch[@]}" --set train.run_dir="$run" >"$run.log" 2>&1 \
        || { echo "run failed: $(tail -3 "$run.log")" >&2; exit 1; }
      read -r s o <<<"$(trace_times "$run/trace.json")"
      all_step[$mode]+="$s,"; all_opt[$mode]+="$o,"
      state[$mode]=$(per_rank "$run/summary.json" optimizer_state_bytes_per_rank b)
      grads[$mode]=$(per_rank "$run/summary.json" grad_bytes_per_rank b)" (peak $(per_rank "$run/summary.json" peak_grad_bytes_per_rank b))"
      params[$mode]=$(per_rank "$run/summary.json" parameter_bytes_per_rank b)" (peak $(per_rank "$run/summary.json" peak_parameter_bytes_per_rank b); gather buffer $(per_rank "$run/summary.json" gather_buffer_bytes_per_rank b))"
      rss[$mode]=$(per_rank "$run/summary.json" peak_rss_mb_per_rank mb)
      tensors[$mode]=$(per_rank "$run/summary.json" peak_tensor_memory_mb_per_rank mb)
      if [[ $stage == 3 ]]; then  # ZeRO-3: time rank 0 waited for parameter gathers, per step
        wait_ms=$(python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print(f\"{v['zero3_gather_wait_ms_per_rank'][0] / v['steps']:.0f}\")" "$run/summary.json")
        gwait[$mode]+="$wait_ms,"
      fi
      [[ -n ${VERBOSE:-} ]] && echo "  rep $rep mode $mode step ms: $s${wait_ms:+ (gather wait ms per step: $wait_ms)}" >&2
      wait_ms=
    done
  done
  for mode in ${MODES:-off 1 2}; do
    echo "| $np | $mode | ${state[$mode]} | ${grads[$mode]} | ${params[$mode]} | ${rss[$mode]} | ${tensors[$mode]} | $(stats "${all_step[$mode]}") | $(stats "${all_opt[$mode]}") |"
  done
  for mode in ${MODES:-off 1 2}; do
    [[ -n ${gwait[$mode]:-} ]] && echo "ZeRO $mode: rank 0 waited for parameter gathers $(stats "${gwait[$mode]}") ms per step (min / median over the repeats)" >&2
  done
  unset all_step all_opt state rss grads params tensors gwait
done
