#!/usr/bin/env bash
# CLI tests of the distributed features, one case per invocation:
# cli_dist_tests.sh CASE HPDL WORKDIR. `hpdl bench scaling` must print a
# prediction table whose efficiency is 1 at one rank and never rises with the
# rank count (alone and under mpirun, where it also measures an allreduce);
# `hpdl train` with train.sync_batchnorm under mpirun must pass the replica check;
# with train.shard_optimizer (ZeRO-1) it must write the same checkpoint bytes as
# without, and checkpoints must resume across sharded/unsharded and rank counts.
# With train.local_sgd_steps (local SGD) it must train, end with identical replicas, and resume exactly.
set -uo pipefail
case_name=$1; hpdl=$2; work=$3/$case_name
mpirun=${MPIEXEC:-mpirun}
ex=${HPDL_EXAMPLES:-$(dirname "$0")/../../examples}
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
fail() { echo "FAIL [$case_name]: $*"; exit 1; }

# Checks the Markdown table in out.txt: first row 1 rank with efficiency 1,
# efficiency (last column) non-increasing, ranks doubling up to $1.
check_table() {
  awk -F'|' -v max="$1" '
    /^\| [0-9]+ \|/ {
      r = $2 + 0; e = $(NF - 1) + 0; n++
      if (n == 1 && (r != 1 || e != 1)) { print "first row is not 1 rank at efficiency 1: " $0; bad = 1 }
      if (n > 1 && r != 2 * prev_r) { print "ranks do not double: " $0; bad = 1 }
      if (n > 1 && e > prev_e + 1e-12) { print "efficiency rises: " $0; bad = 1 }
      prev_r = r; prev_e = e
    }
    END { if (n == 0) { print "no table rows"; bad = 1 } else if (prev_r != max) { print "last row " prev_r " != " max; bad = 1 }
          exit bad }' out.txt
}

case $case_name in
bench_scaling_np1)
  OMP_NUM_THREADS=1 "$hpdl" bench scaling --model mlp --batch 32 --steps 3 --warmup 1 --net eth-25g --overlap 0.2 \
    >out.txt 2>err.txt || fail "bench scaling failed: $(cat err.txt)"
  grep -q "^| ranks | allreduce ms | exposed comm ms | step ms | epoch s" out.txt || fail "no table header: $(head -5 out.txt)"
  check_table 4096 || fail "bad table"
  # eth-25g with little overlap must cost efficiency somewhere in 1..4096 ranks (the column is not constant).
  awk -F'|' '/^\| 4096 \|/ { exit !($(NF - 1) + 0 < 1) }' out.txt || fail "efficiency at 4096 ranks is still 1"
  grep -q "one rank, nothing measured" out.txt || fail "no note about the single rank"
  ;;
bench_scaling_np2)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" bench scaling --model lenet5 --batch 16 \
    --steps 2 --warmup 1 --max-ranks 64 >out.txt 2>err.txt || fail "mpirun bench scaling failed: $(tail -5 err.txt)"
  check_table 64 || fail "bad table"
  [[ $(grep -c "^| ranks |" out.txt) -eq 1 ]] || fail "the table must be printed once (rank 0 only)"
  grep -q "allreduce of [0-9]* bytes over 2 ranks: measured .* ms (Communicator, this machine), ib-hdr model" out.txt \
    || fail "no measured-vs-model line: $(tail -4 out.txt)"
  ;;
bench_scaling_bad_net)
  "$hpdl" bench scaling --net infiniband >out.txt 2>err.txt && fail "an unknown interconnect was accepted"
  grep -q "unknown interconnect 'infiniband' (known: ib-edr, ib-hdr" err.txt || fail "error does not list presets: $(cat err.txt)"
  ;;
train_sync_bn_np2)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/resnet20.toml" \
    --set train.max_steps=2 --set data.batch_size=8 --set data.workers=1 --set train.sync_batchnorm=true \
    --set train.run_dir=run >log 2>&1 || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 2 ranks" log || fail "replicas differ: $(tail -5 log)"
  grep -q "sync_batchnorm = true" run/config.toml || fail "resolved config lacks train.sync_batchnorm"
  ;;
train_sync_bn_groups_np4)
  # BN groups of 2 at 4 ranks: DataParallel broadcasts rank 0's running statistics, so the replicas agree.
  "$mpirun" --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/resnet20.toml" \
    --set train.max_steps=2 --set data.batch_size=4 --set data.workers=1 --set train.sync_batchnorm=true \
    --set train.sync_batchnorm_group=2 --set train.run_dir=run >log 2>&1 || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 4 ranks" log || fail "replicas differ: $(tail -5 log)"
  grep -q "sync_batchnorm_group = 2" run/config.toml || fail "resolved config lacks train.sync_batchnorm_group"
  ;;
train_sync_bn_bad_group_np2)
  if "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train \
      "$ex/fashion_mnist/resnet20.toml" --set train.max_steps=1 --set data.batch_size=4 --set data.workers=1 \
      --set train.sync_batchnorm=true --set train.sync_batchnorm_group=3 --set train.run_dir=run >log 2>&1; then
    fail "a BN group of 3 at 2 ranks was accepted"
  fi
  grep -q "train.sync_batchnorm_group = 3 does not divide the 2 rank" log || fail "unclear error: $(tail -5 log)"
  ;;
train_accumulate_np2)
  # Gradient accumulation under DataParallel: 3 optimizer steps of 2 batches each; the replicas agree.
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
    --set train.max_steps=3 --set data.batch_size=8 --set data.workers=1 --set train.accumulate_steps=2 \
    --set train.log_every=1 --set train.run_dir=run >log 2>&1 || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 2 ranks" log || fail "replicas differ: $(tail -5 log)"
  grep -q '"steps": *3' run/summary.json || fail "expected 3 optimizer steps: $(cat run/summary.json)"
  [[ $(grep -c '"type":"step"' run/metrics.jsonl) -eq 3 ]] || fail "expected 3 step records: $(head -3 run/metrics.jsonl)"
  ;;
train_per_rank_bn_np2)
  # Per-rank BN: running statistics differ per rank unless DataParallel broadcasts rank 0's.
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/resnet20.toml" \
    --set train.max_steps=2 --set data.batch_size=8 --set data.workers=1 --set train.run_dir=run \
    --set train.bucket_mb=0.1 --set train.bf16_wire=true >log 2>&1 \
    || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 2 ranks" log || fail "replicas differ: $(tail -5 log)"
  ;;
train_zero_np2)
  # Sharded optimizer state changes where the state lives, not a single bit of the result: the
  # final checkpoints (weights and the gathered AdamW state) are byte for byte the same.
  for z in false true; do
    "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lenet5.toml" \
      --set train.max_steps=6 --set data.batch_size=32 --set data.workers=1 --set optimizer.name=adamw \
      --set optimizer.lr=0.001 --set train.shard_optimizer=$z --set train.run_dir=run_$z >log_$z 2>&1 \
      || fail "mpirun (shard_optimizer=$z) failed: $(tail -5 log_$z)"
    grep -q "weights identical on all 2 ranks" log_$z || fail "replicas differ (shard_optimizer=$z): $(tail -5 log_$z)"
  done
  grep -q "optimizer state per rank: .* MiB (sharded)" log_true || fail "no per-rank state line: $(tail -3 log_true)"
  grep -q '"shard_optimizer": true' run_true/summary.json || fail "summary.json lacks shard_optimizer"
  cmp run_false/checkpoints/step-0000000006.safetensors run_true/checkpoints/step-0000000006.safetensors \
    || fail "sharded and unsharded checkpoints differ"
  ;;
train_zero2_np2)
  # ZeRO-2 (sharded gradients too) at 2 ranks: the owner's reduce adds the same two numbers as the
  # allreduce, so with a binding clip_grad_norm the final checkpoint is byte for byte ZeRO-1's; after
  # the last step each rank holds only its owned gradients (every byte on exactly one rank; the
  # peak during a step depends on timing and is not checked); the checkpoint resumes unsharded.
  for z in 1 2; do
    "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lenet5.toml" \
      --set train.max_steps=6 --set data.batch_size=32 --set data.workers=1 --set optimizer.name=adamw \
      --set optimizer.lr=0.001 --set optimizer.clip_grad_norm=0.1 --set train.shard_optimizer=true \
      --set train.zero_stage=$z --set train.bucket_mb=0.01 --set train.run_dir=run_$z >log_$z 2>&1 \
      || fail "mpirun (zero_stage=$z) failed: $(tail -5 log_$z)"
    grep -q "weights identical on all 2 ranks" log_$z || fail "replicas differ (zero_stage=$z): $(tail -5 log_$z)"
  done
  grep -q "gradients per rank: .* MiB (sharded)" log_2 || fail "no per-rank gradient line: $(tail -3 log_2)"
  grep -q '"zero_stage": 2' run_2/summary.json || fail "summary.json lacks zero_stage 2"
  python3 -c '
import json, sys
g1, g2 = (json.load(open(f))["grad_bytes_per_rank"] for f in sys.argv[1:])
print("gradient bytes per rank, stage 1:", g1, "stage 2:", g2)
assert all(b < a for a, b in zip(g1, g2)) and sum(g2) == g1[0] and g1[0] == g1[1], (g1, g2)
' run_1/summary.json run_2/summary.json || fail "stage 2 does not hold each gradient byte on exactly one rank"
  cmp run_1/checkpoints/step-0000000006.safetensors run_2/checkpoints/step-0000000006.safetensors \
    || fail "ZeRO-2 and ZeRO-1 checkpoints differ"
  "$mpirun" --oversubscribe --bind-to none -np 1 -x OMP_NUM_THREADS=1 "$hpdl" train --resume run_2 \
    --set train.max_steps=8 --set train.shard_optimizer=false --set train.zero_stage=1 >log_r 2>&1 \
    || fail "np 2 ZeRO-2 -> np 1 unsharded resume failed: $(tail -5 log_r)"
  grep -q "resumed from" log_r || fail "did not resume: $(tail -5 log_r)"
  [[ -f run_2/checkpoints/step-0000000008.safetensors ]] || fail "no checkpoint after the resume"
  ;;
train_zero_resume_np2)
  # Unsharded np 2 for 3 steps, resumed sharded to step 6: the same bytes as 6 straight unsharded
  # steps (a resume at the same rank count is exact). Then that sharded checkpoint resumes on one
  # process (elastic restart) with the full optimizer state.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "${@:2}" \
            --set data.batch_size=32 --set data.workers=1 --set optimizer.name=lamb --set optimizer.lr=0.001; }
  run 2 "$ex/fashion_mnist/lenet5.toml" --set train.max_steps=6 --set train.run_dir=straight >log_a 2>&1 \
    || fail "straight run failed: $(tail -5 log_a)"
  run 2 "$ex/fashion_mnist/lenet5.toml" --set train.max_steps=3 --set train.run_dir=chunked >log_b 2>&1 \
    || fail "first chunk failed: $(tail -5 log_b)"
  run 2 --resume chunked --set train.max_steps=6 --set train.shard_optimizer=true >log_c 2>&1 \
    || fail "sharded resume failed: $(tail -5 log_c)"
  grep -q "resumed from" log_c || fail "did not resume: $(tail -5 log_c)"
  cmp straight/checkpoints/step-0000000006.safetensors chunked/checkpoints/step-0000000006.safetensors \
    || fail "unsharded -> sharded resume differs from the straight run"
  run 1 --resume chunked --set train.max_steps=8 --set train.shard_optimizer=false >log_d 2>&1 \
    || fail "np 2 sharded -> np 1 resume failed: $(tail -5 log_d)"
  [[ -f chunked/checkpoints/step-0000000008.safetensors ]] || fail "no checkpoint after the elastic resume"
  ;;
train_local_sgd_np2)
  # Local SGD, 4 steps between averaging points, one epoch of the MLP: a reasonable test accuracy,
  # identical replicas at the end, and one averaging allreduce per 4 steps (the epoch's last point
  # included) instead of the gradient buckets of every step.
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
    --set train.epochs=1 --set data.workers=1 --set train.local_sgd_steps=4 --set train.run_dir=run >log 2>&1 \
    || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 2 ranks" log || fail "replicas differ: $(tail -5 log)"
  grep -q "local SGD: no gradient allreduce; parameters averaged every 4 steps" log || fail "no local SGD line"
  python3 - run/summary.json <<'PY' || fail "bad summary: $(cat run/summary.json)"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["local_sgd_steps"] == 4, s
assert s["sync_allreduces"] == (s["steps"] + 3) // 4, (s["steps"], s["sync_allreduces"])
assert s["test_accuracy"] > 0.80, s["test_accuracy"]
PY
  ;;
train_local_sgd_resume_np2)
  # Exact resume: 6 straight steps (averaging after 3 and 6) against 3 steps, a checkpoint, and a
  # resume to 6. Nesterov momentum stays per rank, so each rank must get its own back.
  run() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$@" \
            --set data.batch_size=32 --set data.workers=1; }
  run "$ex/fashion_mnist/mlp.toml" --set train.local_sgd_steps=3 --set train.max_steps=6 --set train.run_dir=straight \
    >log_a 2>&1 || fail "straight run failed: $(tail -5 log_a)"
  run "$ex/fashion_mnist/mlp.toml" --set train.local_sgd_steps=3 --set train.max_steps=3 --set train.run_dir=chunked \
    >log_b 2>&1 || fail "first chunk failed: $(tail -5 log_b)"
  run --resume chunked --set train.max_steps=6 >log_c 2>&1 || fail "resume failed: $(tail -5 log_c)"
  grep -q "resumed from" log_c || fail "did not resume: $(tail -5 log_c)"
  grep -q "weights identical on all 2 ranks" log_c || fail "replicas differ after the resume: $(tail -5 log_c)"
  cmp straight/checkpoints/step-0000000006.safetensors chunked/checkpoints/step-0000000006.safetensors \
    || fail "the resumed local SGD run differs from the straight one"
  ;;
*) fail "unknown case" ;;
esac
echo "PASS [$case_name]"
