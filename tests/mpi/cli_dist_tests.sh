#!/usr/bin/env bash
# CLI tests of the distributed features, one case per invocation:
# cli_dist_tests.sh CASE HPDL WORKDIR. `hpdl bench scaling` must print a
# prediction table whose efficiency is 1 at one rank and never rises with the
# rank count (alone and under mpirun, where it also measures an allreduce);
# `hpdl train` with train.sync_batchnorm under mpirun must pass the replica check;
# with train.shard_optimizer (ZeRO-1) it must write the same checkpoint bytes as
# without, and checkpoints must resume across sharded/unsharded and rank counts.
# With train.local_sgd_steps (local SGD) it must train, end with identical replicas, and resume exactly.
# With train.pipeline_stages (pipeline parallelism) it must follow the loss curve of the data-parallel
# run with the same global batch, write whole-model checkpoints that resume at any stage count, and
# refuse by name what it does not support.
# With train.tensor_parallel (a vit's encoder layers split over groups of ranks) it must follow the
# one-process (or data-parallel) loss curve, and its checkpoints must resume at any group size; so must
# pipeline stages split over such groups (with replicas: the 3-D grid).
# With train.activation_checkpointing, a pipeline and a tensor-parallel run train bit for bit as without.
# With train.zero_stage = 3 (parameters sharded too) it must train bit for bit as ZeRO-2 (metrics, evaluation,
# checkpoint bytes), resume with either stage and on one process, and refuse what it does not support by name.
# With train.precision = "bf16" (CPU), a pipeline and a data-parallel run pass what fp32 passes and follow
# the fp32 loss curve loosely, but not exactly.
# With train.ema_decay (weight averaging) every rank keeps the same averages, also with ZeRO-1.
# With train.early_stopping_patience every rank stops after the same epoch, and train.keep_best's model is
# gathered to rank 0 as checkpoints are.
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

# compare_curves RUN_A RUN_B RTOL [KEYS]: the step records of two runs' metrics.jsonl have the same
# steps, and their KEYS (default loss,accuracy) agree within RTOL (relative; 0: exactly).
compare_curves() {
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" "${4:-loss,accuracy}" <<'PY'
import json, sys
def steps(p):
    return [r for r in map(json.loads, open(p)) if r.get("type") == "step"]
a, b, tol = steps(sys.argv[1]), steps(sys.argv[2]), float(sys.argv[3])
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert x["step"] == y["step"], (x["step"], y["step"])
    for k in sys.argv[4].split(","):
        d = abs(x[k] - y[k]) / max(1e-12, abs(x[k]))
        worst = max(worst, d)
        assert d <= tol, (x["step"], k, x[k], y[k])
print(f"{len(a)} steps, worst relative difference {worst:.3g}")
PY
}

# resume_to_bytes NP RUN STEPS REF WHAT: `hpdl train --resume RUN` on NP ranks up to train.max_steps =
# STEPS resumes and writes the checkpoint of step STEPS byte for byte as the straight run REF did.
resume_to_bytes() {
  local f
  f=checkpoints/$(printf 'step-%010d.safetensors' "$3")
  "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train --resume "$2" \
    --set train.max_steps="$3" >"$2.resume.log" 2>&1 || fail "$5: the resume failed: $(tail -5 "$2.resume.log")"
  grep -q "resumed from" "$2.resume.log" || fail "$5: did not resume: $(tail -5 "$2.resume.log")"
  cmp "$4/$f" "$2/$f" || fail "$5 differs from the straight run"
}

# evaluates RUN WHAT: `hpdl eval` reads the checkpoint of RUN (written by WHAT) and prints an accuracy.
evaluates() {
  OMP_NUM_THREADS=1 "$hpdl" eval --checkpoint "$1" >"$1.eval" 2>&1 || fail "hpdl eval of a $2 checkpoint failed: $(tail -3 "$1.eval")"
  grep -qi "accuracy" "$1.eval" || fail "hpdl eval of a $2 checkpoint printed no accuracy: $(tail -3 "$1.eval")"
}

# compare_checkpoints A B RTOL: two safetensors files hold the same tensors (names, dtypes, shapes),
# every float element equal within RTOL of the tensor's largest magnitude (0: exactly equal).
compare_checkpoints() {
  python3 - "$1" "$2" "$3" <<'PY'
import array, json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n]); base = 8 + n; out = {}
    for k, v in head.items():
        if k == "__metadata__": continue
        raw = b[base + v["data_offsets"][0]:base + v["data_offsets"][1]]
        code = {"F32": "f", "F64": "d", "I64": "q"}.get(v["dtype"])
        out[k] = (v["dtype"], v["shape"], array.array(code, raw) if code else raw)
    return out
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert sorted(a) == sorted(b), set(a) ^ set(b)
worst, where = 0.0, ""
for k in a:
    (ta, sa, xa), (tb, sb, xb) = a[k], b[k]
    assert ta == tb and sa == sb, (k, ta, tb, sa, sb)
    scale = max([abs(v) for v in xa] + [1e-30])
    for u, v in zip(xa, xb):
        d = abs(u - v) / scale
        if d > worst: worst, where = d, k
        assert d <= tol, (k, u, v, d)
print(f"{len(a)} tensors, worst difference {worst:.3g} of the tensor's largest magnitude ({where})")
PY
}

# A tiny vit for the tensor-parallel cases (2 layers, 2 heads, dim 16, 7x7 patches), trained by SGD with
# momentum at a constant rate: Adam would scale the key bias's gradient (zero but for rounding, as
# softmax ignores a shift) up to full steps, so its rounding noise would not stay small.
tiny_vit="--set model.patch_size=7 --set model.dim=16 --set model.depth=2 --set model.heads=2 --set optimizer.name=sgd
  --set optimizer.lr=0.05 --set optimizer.momentum=0.9 --set optimizer.weight_decay=0 --set schedule.name=constant
  --set schedule.warmup_epochs=0"

# same_steps_and_checkpoint RUN_A RUN_B STEPS: the two runs' step records are identical but for
# timings (STEPS of them), and their last checkpoints (step STEPS) hold the same bytes.
same_steps_and_checkpoint() {
  local strip='s/"(data_wait_s|samples_per_s|seconds)":[^,}]*,?//g'
  sed -E "$strip" "$1/metrics.jsonl" | grep '"type":"step"' >"$1.steps"
  sed -E "$strip" "$2/metrics.jsonl" | grep '"type":"step"' >"$2.steps"
  [[ $(wc -l <"$1.steps") == "$3" ]] || { echo "$1: $(wc -l <"$1.steps") step records, expected $3"; return 1; }
  cmp -s "$1.steps" "$2.steps" || { diff "$1.steps" "$2.steps" | head -4; return 1; }
  local ck; ck=checkpoints/step-$(printf %010d "$3").safetensors
  cmp "$1/$ck" "$2/$ck"
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
train_threads_np2)
  # train.threads = 0 and no OMP_NUM_THREADS (design decision 86): 2 ranks under --bind-to none share
  # every core, so each takes half of them (at least one) rather than one thread per core; the log
  # says why. OMP_NUM_THREADS or train.threads, when given, are obeyed as they are.
  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc); want=$(( cores / 2 > 0 ? cores / 2 : 1 ))  # nproc obeys OMP_NUM_THREADS
  run() { env -u OMP_NUM_THREADS "$mpirun" --oversubscribe --bind-to none -np 2 $mpi_extra "$hpdl" train \
            "$ex/fashion_mnist/mlp.toml" --set train.max_steps=2 --set data.batch_size=8 --set data.workers=1 \
            --set train.overwrite=true --set train.run_dir=run "$@"; }
  mpi_extra=
  run >log 2>&1 || fail "mpirun failed: $(tail -5 log)"
  grep -q "2 rank(s) x $want thread(s)" log || fail "expected $want thread(s) per rank on $cores cores: $(grep training log)"
  if (( want < cores )); then
    grep -q "cores are shared by 2 ranks of its machine" log || fail "no note on the shared cores: $(grep training log)"
  fi
  grep -q "\"threads\": *$want" run/summary.json || fail "summary.json: $(grep threads run/summary.json)"
  mpi_extra="-x OMP_NUM_THREADS=2" run >log_env 2>&1 || fail "mpirun with OMP_NUM_THREADS failed: $(tail -5 log_env)"
  grep -q "2 rank(s) x 2 thread(s), batch" log_env || fail "OMP_NUM_THREADS=2 not obeyed: $(grep training log_env)"
  run --set train.threads=2 >log_set 2>&1 || fail "mpirun with train.threads failed: $(tail -5 log_set)"
  grep -q "2 rank(s) x 2 thread(s), batch" log_set || fail "train.threads = 2 not obeyed: $(grep training log_set)"
  # hpdl info under mpirun says the same before any training.
  env -u OMP_NUM_THREADS "$mpirun" --oversubscribe --bind-to none -np 2 "$hpdl" info >info.txt 2>&1 \
    || fail "hpdl info failed: $(cat info.txt)"
  grep -q "rank 0 may run on $cores core(s), shared with 1 rank(s) of its machine: hpdl train takes $want thread(s)" \
    info.txt || fail "hpdl info: $(grep core info.txt)"
  ;;
train_powersgd_np2)
  # train.powersgd_rank = 4 on the mlp (2 ranks, one epoch): its 3 weight matrices go as rank-4
  # factors, 53x fewer values per step; the replicas stay bitwise equal (the factors are all-reduced,
  # and every rank rebuilds the same low-rank mean), the bytes on the wire fall accordingly, and the
  # test accuracy stays within 1.5 points of plain data parallelism (measured 84.68% against 85.01%).
  run() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set train.epochs=1 --set data.workers=1 "$@"; }
  run --set train.run_dir=plain >log_p 2>&1 || fail "plain run failed: $(tail -5 log_p)"
  run --set train.powersgd_rank=4 --set train.run_dir=psgd >log_c 2>&1 || fail "PowerSGD run failed: $(tail -5 log_c)"
  grep -q "PowerSGD rank 4: 3 weight matrices sent as factors; 10098 of 535818 gradient values on the wire per step \
(53.1x fewer) from step 0" log_c || fail "no PowerSGD line: $(grep -i powersgd log_c)"
  grep -q "weights identical on all 2 ranks" log_c || fail "replicas differ: $(grep replica log_c)"
  python3 - plain/summary.json psgd/summary.json <<'PY' || fail "PowerSGD summary check failed"
import json, sys
p, c = (json.load(open(f)) for f in sys.argv[1:3])
ratio = p["sync_allreduce_mb"] / c["sync_allreduce_mb"]
print(f"wire {p['sync_allreduce_mb']:.1f} -> {c['sync_allreduce_mb']:.2f} MiB ({ratio:.1f}x); "
      f"test accuracy {p['test_accuracy']:.4f} -> {c['test_accuracy']:.4f}")
assert ratio > 40, ratio
assert c["test_accuracy"] > p["test_accuracy"] - 0.015, (p["test_accuracy"], c["test_accuracy"])
PY
  # Resume: the checkpoint holds Q and the ranks' mean error (powersgd.*), and only the ranks' sum of
  # errors steers the next step, so 40 steps resumed at 20 follow the straight run to rounding
  # (measured 4.1e-7 on the weights, 3.7e-5 on an error tensor). Restarting the error and Q instead
  # moves the weights by 7e-2 (tried).
  run2() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$@"; }
  run2 "$ex/fashion_mnist/mlp.toml" --set train.max_steps=40 --set data.workers=1 --set train.powersgd_rank=4 \
    --set train.checkpoint_every_steps=20 --set train.keep_checkpoints=3 --set train.run_dir=straight >log_s 2>&1 \
    || fail "straight run failed: $(tail -5 log_s)"
  cp -r straight resumed && rm resumed/checkpoints/step-0000000040.* || fail "cannot copy the run"
  run2 --resume resumed >log_r 2>&1 || fail "resume failed: $(tail -5 log_r)"
  grep -q "PowerSGD: 3 of 3 matrices resume their error and Q from the checkpoint" log_r \
    || fail "PowerSGD state not resumed: $(grep -i powersgd log_r)"
  compare_checkpoints straight/checkpoints/step-0000000040.safetensors resumed/checkpoints/step-0000000040.safetensors \
    1e-3 || fail "the resumed PowerSGD run left the straight one"
  ;;
train_hierarchical_np4)
  # Hierarchical allreduce, 4 ranks posing as 2 nodes of 2 (HPDL_NODE_ID): the replicas stay
  # identical, summary.json says it was used, and the loss curve is the flat allreduce's up to
  # the order of the additions. On one node (2 ranks, no HPDL_NODE_ID) it says why it is not used.
  for h in false true; do
    "$mpirun" --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 sh -c \
      'HPDL_NODE_ID=$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" "$@"' "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
      --set train.max_steps=5 --set data.batch_size=16 --set data.workers=1 --set train.log_every=1 \
      --set train.bucket_mb=0.5 --set train.hierarchical_allreduce=$h --set train.run_dir=run_$h >log_$h 2>&1 \
      || fail "mpirun (hierarchical_allreduce=$h) failed: $(tail -5 log_$h)"
    grep -q "weights identical on all 4 ranks" log_$h || fail "replicas differ (hierarchical=$h): $(tail -5 log_$h)"
    grep -q "\"hierarchical_allreduce\": *$h" run_$h/summary.json \
      || fail "summary.json should say hierarchical_allreduce: $h: $(cat run_$h/summary.json)"
  done
  # The mlp's buckets (0.5 MiB) are above the 256 KiB the hierarchy starts at: every one of them went that way.
  python3 -c 'import json, sys; n = json.load(open(sys.argv[1])).get("hierarchical_allreduces", 0); sys.exit(n < 5)' \
    run_true/summary.json || fail "no hierarchical allreduces counted: $(cat run_true/summary.json)"
  compare_curves run_false run_true 1e-4 loss >cmp.txt || fail "hierarchical and flat loss curves differ: $(cat cmp.txt)"
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
    --set train.max_steps=1 --set data.batch_size=8 --set data.workers=1 --set train.hierarchical_allreduce=true \
    --set train.run_dir=run_one_node >log_one 2>&1 || fail "mpirun (one node) failed: $(tail -5 log_one)"
  grep -q "train.hierarchical_allreduce: not used (2 replica rank(s)" log_one || fail "no 'not used' line: $(tail -5 log_one)"
  grep -q '"hierarchical_allreduce": *false' run_one_node/summary.json || fail "one node: summary.json says it was used"
  # hpdl info shows the layout once (rank 0), and whether the hierarchy would be used.
  "$mpirun" --oversubscribe --bind-to none -np 4 sh -c 'HPDL_NODE_ID=$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" info' \
    "$hpdl" >info4.txt 2>&1 || fail "hpdl info under mpirun failed: $(cat info4.txt)"
  [[ $(grep -c "^hpdl " info4.txt) -eq 1 ]] || fail "hpdl info printed on more than rank 0: $(cat info4.txt)"
  grep -q "^ranks 4 on 2 node(s), 2 per node (train.hierarchical_allreduce would be used)" info4.txt \
    || fail "no layout line for 2 nodes of 2: $(cat info4.txt)"
  "$mpirun" --oversubscribe --bind-to none -np 3 sh -c 'HPDL_NODE_ID=$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" info' \
    "$hpdl" >info3.txt 2>&1 || fail "hpdl info under mpirun -np 3 failed: $(cat info3.txt)"
  grep -q "^ranks 3 on 2 node(s), 1-2 per node (train.hierarchical_allreduce would stay flat" info3.txt \
    || fail "no layout line for unequal nodes: $(cat info3.txt)"
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
train_ema_np2)
  # Weight averaging under data parallelism: every rank keeps the same averages (per-rank batch norm
  # with rank 0's statistics broadcast; the replica check compares the averages too), and with a
  # sharded optimizer (ZeRO-1) the averages and weights are byte for byte the unsharded run's.
  for z in false true; do
    "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/resnet20.toml" \
      --set train.max_steps=4 --set data.batch_size=8 --set data.workers=1 --set train.ema_decay=0.5 \
      --set train.shard_optimizer=$z --set train.run_dir=run_$z >log_$z 2>&1 || fail "mpirun (shard_optimizer=$z) failed: $(tail -5 log_$z)"
    grep -q "weights identical on all 2 ranks" log_$z || fail "replicas differ (shard_optimizer=$z): $(tail -5 log_$z)"
  done
  grep -q '"ema.0.weight"' run_true/checkpoints/step-0000000004.safetensors || fail "no averages in the checkpoint"
  cmp run_false/checkpoints/step-0000000004.safetensors run_true/checkpoints/step-0000000004.safetensors \
    || fail "sharded and unsharded checkpoints (weights and averages) differ"
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
train_zero3_np2)
  # ZeRO-3 (parameters sharded too) at 2 ranks, one epoch of LeNet-5 with evaluation: the same owner
  # reduces as ZeRO-2 and the same forward bytes, so the metrics (the test evaluation's too, whose
  # forward gathers unit by unit) and the checkpoint are bitwise ZeRO-2's; each rank holds about half
  # the parameters; a stage-3 checkpoint resumes with stage 3 and stage 2 alike, and on one process.
  # run NAME NP ARGS...: hpdl train under mpirun, its output in log_NAME.
  run() { local name=$1 np=$2; shift 2
          "$mpirun" --oversubscribe --bind-to none -np "$np" -x OMP_NUM_THREADS=1 "$hpdl" train "$@" >"log_$name" 2>&1; }
  for z in 2 3; do
    run "run_$z" 2 "$ex/fashion_mnist/lenet5.toml" --set train.epochs=1 --set data.batch_size=1024 --set data.workers=1 \
      --set optimizer.name=adamw --set optimizer.lr=0.001 --set optimizer.clip_grad_norm=0.1 \
      --set train.shard_optimizer=true --set train.bucket_mb=0.01 --set train.log_every=5 --set train.zero_stage=$z \
      --set train.run_dir=run_$z \
      || fail "mpirun (zero_stage=$z) failed: $(tail -5 log_run_$z)"
  done
  grep -q "ZeRO-3: parameters, gradients and optimizer state sharded over 2 ranks; 5 units" log_run_3 \
    || fail "no ZeRO-3 line: $(grep hpdl: log_run_3 | head -5)"
  grep -q "buffers identical on all 2 ranks" log_run_3 || fail "no replica check line: $(tail -5 log_run_3)"
  grep -q "parameters per rank: .* MiB (sharded" log_run_3 || fail "no parameters-per-rank line"
  python3 - run_2/summary.json run_3/summary.json <<'PY' || fail "bad summary: $(cat run_3/summary.json)"
import json, sys
s2, s3 = (json.load(open(f)) for f in sys.argv[1:])
assert s3["zero_stage"] == 3 and s2["zero_stage"] == 2, (s2["zero_stage"], s3["zero_stage"])
p2, p3 = s2["parameter_bytes_per_rank"], s3["parameter_bytes_per_rank"]
print("parameter bytes per rank, stage 2:", p2, "stage 3:", p3, "peak:", s3["peak_parameter_bytes_per_rank"])
assert p2[0] == p2[1] and sum(p3) == p2[0] and all(b < p2[0] for b in p3), (p2, p3)
assert all(p3[r] < pk <= p2[0] + 4096 for r, pk in enumerate(s3["peak_parameter_bytes_per_rank"])), s3
for k in ("test_loss", "test_accuracy", "final_train_loss"):
    assert s2[k] == s3[k], (k, s2[k], s3[k])
assert s3["test_accuracy"] > 0.5, s3["test_accuracy"]
PY
  compare_curves run_2 run_3 0 || fail "stage 3 and stage 2 loss curves differ"
  last=$(basename "$(ls run_3/checkpoints/step-*.safetensors | tail -1)")
  cmp "run_2/checkpoints/$last" "run_3/checkpoints/$last" || fail "ZeRO-3 and ZeRO-2 checkpoints differ ($last)"
  # Resume each stage from the stage-3 checkpoint for 3 more steps: the same bytes.
  steps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"])' run_3/summary.json)
  cp -r run_3 res_2 && cp -r run_3 res_3
  for z in 2 3; do
    run "res_$z" 2 --resume "res_$z" --set train.epochs=2 --set train.max_steps=$((steps + 3)) \
      --set train.zero_stage=$z --set train.run_dir="res_$z" || fail "resume with zero_stage=$z failed: $(tail -5 log_res_$z)"
    grep -q "resumed from" "log_res_$z" || fail "did not resume (zero_stage=$z)"
  done
  want=$(printf "step-%010d.safetensors" $((steps + 3)))
  cmp "res_2/checkpoints/$want" "res_3/checkpoints/$want" || fail "resumed ZeRO-3 and ZeRO-2 checkpoints differ ($want)"
  run np1 1 --resume run_3 --set train.epochs=2 --set train.max_steps=$((steps + 2)) --set train.shard_optimizer=false \
    --set train.zero_stage=1 || fail "np 2 ZeRO-3 -> np 1 unsharded resume failed: $(tail -5 log_np1)"
  [[ -f run_3/checkpoints/$(printf "step-%010d.safetensors" $((steps + 2))) ]] || fail "no checkpoint after the np 1 resume"
  ;;
train_zero3_refused_np2)
  # What stage 3 does not support is refused by name: a model that is not a sequence of layers (an
  # lstm), sync batch norm, and stage 3 without the sharded optimizer.
  base=(train "$ex/fashion_mnist/lenet5.toml" --set train.max_steps=1 --set data.workers=1 --set train.zero_stage=3)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lstm.toml" \
    --set train.max_steps=1 --set data.workers=1 --set train.shard_optimizer=true --set train.zero_stage=3 \
    --set train.run_dir=lstm >log_lstm 2>&1 && fail "an lstm trained with zero_stage 3"
  grep -q 'train.zero_stage = 3: model.name = "lstm" is not a sequence of layers' log_lstm \
    || fail "lstm not refused by name: $(tail -3 log_lstm)"
  "$hpdl" "${base[@]}" --set train.shard_optimizer=true --set train.sync_batchnorm=true --set train.run_dir=a >log_a 2>&1 \
    && fail "sync batch norm accepted"
  grep -q "train.zero_stage = 3 cannot be combined with train.sync_batchnorm = true" log_a \
    || fail "sync batch norm not refused by name: $(tail -3 log_a)"
  "$hpdl" "${base[@]}" --set train.run_dir=b >log_b 2>&1 && fail "zero_stage 3 without shard_optimizer accepted"
  grep -q "train.zero_stage = 3 needs train.shard_optimizer = true" log_b || fail "not refused by name: $(tail -3 log_b)"
  ;;
train_zero3_vit_np2)
  # ZeRO-3 on a vit (design decision 84): its layers (embedding, each encoder layer, head) are the
  # units. The tiny vit with AdamW and dropout 0.1 (each unit's recompute must draw its forward's
  # masks), 6 steps of 8 per rank: step records and checkpoints bit for bit ZeRO-2's, and ZeRO-3's
  # step-3 checkpoint resumed with ZeRO-3 gives ZeRO-2's step-6 bytes.
  run() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set optimizer.name=adamw --set optimizer.lr=0.001 --set model.dropout=0.1 --set data.batch_size=8 \
            --set data.workers=1 --set data.validation=59904 --set train.epochs=1 --set train.log_every=1 \
            --set train.checkpoint_every_steps=3 --set train.keep_checkpoints=3 --set train.shard_optimizer=true \
            --set train.bucket_mb=0.01 "$@"; }
  run --set train.zero_stage=2 --set train.run_dir=z2 >log_2 2>&1 || fail "ZeRO-2 run failed: $(tail -5 log_2)"
  run --set train.zero_stage=3 --set train.run_dir=z3 >log_3 2>&1 || fail "ZeRO-3 run failed: $(tail -5 log_3)"
  grep -q "ZeRO-3: parameters, gradients and optimizer state sharded over 2 ranks; 4 units" log_3 \
    || fail "no ZeRO-3 line: $(grep ZeRO log_3)"
  same_steps_and_checkpoint z2 z3 6 || fail "ZeRO-3 on the vit differs from ZeRO-2"
  cp -r z3 z3_r && rm z3_r/checkpoints/step-0000000006.* || fail "cannot copy z3"
  run --set train.zero_stage=3 --resume z3_r >log_r 2>&1 || fail "ZeRO-3 resume failed: $(tail -5 log_r)"
  grep -q "resumed from .*step-0000000003" log_r || fail "did not resume from step 3: $(tail -5 log_r)"
  cmp z2/checkpoints/step-0000000006.safetensors z3_r/checkpoints/step-0000000006.safetensors \
    || fail "ZeRO-3 resumed on the vit differs from the straight run"
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
# Ranks meet for metrics and signals only at averaging points and logging steps (train.log_every 50, and step 1).
meet = sum(1 for k in range(1, s["steps"] + 1) if k % 4 == 0 or k % 50 == 0 or k == 1)
assert s["step_meetings"] == meet, (s["step_meetings"], meet)
PY
  python3 - run/metrics.jsonl <<'PY' || fail "the epoch did not count every sample: $(grep epoch run/metrics.jsonl)"
import json, sys
epochs = [r for r in map(json.loads, open(sys.argv[1])) if r["type"] == "epoch"]
assert len(epochs) == 1 and epochs[0]["samples"] == 60000, epochs
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
train_pipeline_np2)
  # A tiny MLP on 6000 training samples (54000 held out for validation), one epoch. Two stages with one
  # micro-batch do exactly what one process does: the same checkpoint bytes, metrics and evaluation.
  # Four micro-batches (1F1B) change only the order of float sums in the gradients.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set train.epochs=1 --set model.hidden=[64] --set data.batch_size=64 --set data.validation=54000 \
            --set data.workers=1 --set train.log_every=1 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed: $(tail -5 log_2)"
  run 2 --set train.pipeline_stages=2 --set train.micro_batches=4 --set train.pipeline_schedule=1f1b \
    --set train.run_dir=pipe_m4 >log_3 2>&1 || fail "1f1b pipeline run failed: $(tail -5 log_3)"
  grep -q "pipeline: 2 stages x 1 replica(s), 4 micro-batches per batch (1f1b)" log_3 || fail "no pipeline line: $(head -3 log_3)"
  cmp single/checkpoints/step-0000000094.safetensors pipe/checkpoints/step-0000000094.safetensors \
    || fail "the 2-stage checkpoint differs from the single-process one"
  compare_curves single pipe 0 || fail "the 2-stage metrics differ from the single-process ones"
  compare_curves single pipe_m4 1e-4 || fail "the 4-micro-batch loss curve is off"
  python3 - single/summary.json pipe/summary.json pipe_m4/summary.json <<'PY' || fail "bad summaries"
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:])
assert b["pipeline_stages"] == 2 and c["micro_batches"] == 4 and c["pipeline_schedule"] == "1f1b", (b, c)
for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
    assert a[k] == b[k], (k, a[k], b[k])
    assert abs(a[k] - c[k]) <= 2e-3 * max(1.0, abs(a[k])), (k, a[k], c[k])
assert a["test_accuracy"] > 0.6, a["test_accuracy"]
PY
  ;;
train_pipeline_vit_np2)
  # A vit cut into pipeline stages (embedding, encoder layers, head: 4 layers for the tiny vit), one
  # epoch of 96 samples (6 steps), checkpoints at steps 3 and 6. Two stages with one micro-batch do
  # exactly what one process does (checkpoint bytes, metrics, evaluation); four 1F1B micro-batches with
  # activation checkpointing change only float sums. Checkpoints are the whole vit: the 2-stage step-3
  # one resumes on one process, the one-process one on 2 stages, both to the straight run's bytes.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set data.validation=59904 --set train.epochs=1 \
            --set train.log_every=1 --set train.checkpoint_every_steps=3 --set train.keep_checkpoints=3 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed: $(tail -5 log_2)"
  grep -q "pipeline: 2 stages x 1 replica(s), 1 micro-batches per batch (gpipe); stages begin at layers 0, 2 of 4" log_2 \
    || fail "no pipeline line: $(grep pipeline log_2)"
  run 2 --set train.pipeline_stages=2 --set train.micro_batches=4 --set train.pipeline_schedule=1f1b \
    --set train.activation_checkpointing=true --set train.run_dir=pipe_m4 >log_3 2>&1 || fail "1f1b run failed: $(tail -5 log_3)"
  grep -q "activation checkpointing: stage 0: 1 segments: each residual block or encoder layer" log_3 \
    || fail "no checkpointing line: $(grep checkpointing log_3)"
  step6=checkpoints/step-0000000006.safetensors
  cmp single/$step6 pipe/$step6 || fail "the 2-stage checkpoint differs from the single-process one"
  compare_curves single pipe 0 || fail "the 2-stage metrics differ from the single-process ones"
  compare_curves single pipe_m4 1e-4 || fail "the 4-micro-batch loss curve is off"
  compare_checkpoints single/$step6 pipe_m4/$step6 1e-4 || fail "the 4-micro-batch checkpoint is off"
  python3 - single/summary.json pipe/summary.json <<'PY' || fail "bad summaries"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert b["pipeline_stages"] == 2, b
for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
    assert a[k] == b[k], (k, a[k], b[k])
PY
  for from_to in "pipe 1" "single 2"; do
    set -- $from_to; dir=resume_from_$1
    cp -r "$1" "$dir" && rm "$dir"/checkpoints/step-0000000006.* || fail "cannot copy $1"
    run "$2" --resume "$dir" --set train.pipeline_stages="$2" >log_$dir 2>&1 || fail "resume of $1 on $2 stage(s) failed: $(tail -5 log_$dir)"
    grep -q "resumed from .*step-0000000003" log_$dir || fail "did not resume from step 3: $(tail -5 log_$dir)"
    cmp single/$step6 "$dir/$step6" || fail "$1 resumed on $2 stage(s) differs from the straight run"
  done
  evaluates resume_from_single "pipeline"
  ;;
train_pipeline_resnet_np2)
  # resnet20's pipeline layers are its leaves (its 3 stages of 3 blocks opened up: 15 layers), so the
  # balanced cut falls inside a stage of blocks (at layer 10, block 5.1). Two stages with one
  # micro-batch are bitwise one process (4 steps of 16); the 2-stage step-2 checkpoint (names such
  # as 5.1.conv1.weight from the nested stage) resumes on one process to the straight run's bytes.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/resnet20.toml" \
            --set data.batch_size=16 --set data.workers=1 --set train.max_steps=4 --set train.eval_every_epochs=0 \
            --set train.log_every=1 --set train.checkpoint_every_steps=2 --set train.keep_checkpoints=2 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed: $(tail -5 log_2)"
  grep -q "stages begin at layers 0, 10 of 15" log_2 || fail "not cut inside a stage of blocks: $(grep pipeline log_2)"
  step4=checkpoints/step-0000000004.safetensors
  cmp single/$step4 pipe/$step4 || fail "the 2-stage resnet20 checkpoint differs from the single-process one"
  compare_curves single pipe 0 || fail "the 2-stage resnet20 metrics differ from the single-process ones"
  cp -r pipe resumed && rm resumed/checkpoints/step-0000000004.* || fail "cannot copy pipe"
  run 1 --resume resumed >log_r 2>&1 || fail "resume on one process failed: $(tail -5 log_r)"
  grep -q "resumed from .*step-0000000002" log_r || fail "did not resume from step 2: $(tail -5 log_r)"
  cmp single/$step4 resumed/$step4 || fail "the 2-stage checkpoint resumed on one process differs from the straight run"
  # train.pipeline_split_points: a cut of the user's (after the first block, where the parameters are
  # few but the work is not), the same bytes.
  run 2 --set train.pipeline_stages=2 --set "train.pipeline_split_points=[4]" --set train.run_dir=split \
    >log_s 2>&1 || fail "pipeline run with split points failed: $(tail -5 log_s)"
  grep -q "stages begin at layers 0, 4 of 15" log_s || fail "the split point was not used: $(grep pipeline log_s)"
  cmp single/$step4 split/$step4 || fail "the pipeline cut at layer 4 differs from the single-process run"
  # train.pipeline_balance = "time": the layers are timed forward and backward on one micro-batch
  # before the cut (batch norm updating its running statistics); the run must still be bitwise
  # one process, so profiling left the model as it found it. Where the cut falls depends on the
  # timings; the log says it and what both balances would give.
  run 2 --set train.pipeline_stages=2 --set train.pipeline_balance=time --set train.run_dir=timed \
    >log_t 2>&1 || fail "pipeline run balanced by time failed: $(tail -5 log_t)"
  grep -Eq "stages begin at layers 0, [0-9]+ of 15; balanced by time: stages take [0-9.]+, [0-9.]+ ms per \
micro-batch of 16 \(balanced by parameters: [0-9.]+, [0-9.]+ ms\)" log_t || fail "no time balance line: $(grep pipeline log_t)"
  cmp single/$step4 timed/$step4 || fail "the pipeline balanced by time differs from the single-process run"
  ;;
train_pipeline_vit_np4)
  # The tiny vit on 4 ranks: one stage per layer (embedding, 2 encoder layers, head) with one
  # micro-batch is bitwise one process; a 2 x 2 grid (2 stages x 2 replicas, 2 micro-batches) follows
  # 2-rank data parallelism with the same global batch to float summation order. Dropout on, so the
  # stages' generators (the encoder layers') must be the model's own: the grid's checkpoint equals
  # data parallelism's to rounding, generators included.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set data.validation=59904 --set train.epochs=1 \
            --set train.log_every=1 --set train.eval_every_epochs=0 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 4 --set train.pipeline_stages=4 --set train.run_dir=pipe4 >log_2 2>&1 || fail "4-stage run failed: $(tail -5 log_2)"
  grep -q "stages begin at layers 0, 1, 2, 3 of 4" log_2 || fail "no pipeline line: $(grep pipeline log_2)"
  cmp single/checkpoints/step-0000000006.safetensors pipe4/checkpoints/step-0000000006.safetensors \
    || fail "the 4-stage checkpoint differs from the single-process one"
  compare_curves single pipe4 0 || fail "the 4-stage metrics differ from the single-process ones"
  run 2 --set model.dropout=0.1 --set train.run_dir=dp >log_3 2>&1 || fail "data-parallel run failed: $(tail -5 log_3)"
  # The grid is balanced by time: the layers' dropout draws while profiling must be undone, or the
  # masks (and so the checkpoint) would differ from data parallelism's.
  run 4 --set model.dropout=0.1 --set train.pipeline_stages=2 --set train.micro_batches=2 --set train.run_dir=grid \
    --set train.pipeline_balance=time >log_4 2>&1 || fail "2 x 2 grid run failed: $(tail -5 log_4)"
  grep -q "pipeline: 2 stages x 2 replica(s), 2 micro-batches per batch .*; balanced by time" log_4 \
    || fail "no grid line: $(grep pipeline log_4)"
  compare_curves dp grid 1e-4 || fail "the 2 x 2 grid's loss curve is off"
  compare_checkpoints dp/checkpoints/step-0000000003.safetensors grid/checkpoints/step-0000000003.safetensors 1e-4 \
    || fail "the 2 x 2 grid's checkpoint differs from data parallelism's"
  ;;
train_bf16_np2)
  # train.precision = "bf16" on the CPU (design decisions 69, 71) with a 2-stage pipeline and with data
  # parallelism over 2 ranks. The tiny MLP of train_pipeline_np2, 40 steps. Both bf16 runs pass what their
  # fp32 runs pass (2 stages with one micro-batch: bit for bit the one-process bf16 run; data parallel:
  # the replica check), follow their fp32 loss curve loosely, and differ from it (by more than 1e-5 at
  # some step: bf16 was applied in every rank and stage). Loosely: each of the first 10 steps within 2%
  # (relative; measured at most 0.5%), then the mean loss of each block of 10 steps within 10%
  # (measured at most 6%: later single-batch losses drift apart as the two trajectories do).
  if ! "$hpdl" info 2>&1 | grep -Eq "ISA (avx512_core_bf16|avx512_core_amx)"; then
    echo "PASS [$case_name] (this CPU has no bfloat16 kernels: nothing to check)"; exit 0
  fi
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set train.max_steps=40 --set model.hidden=[64] --set data.batch_size=64 --set data.validation=54000 \
            --set data.workers=1 --set train.log_every=1 "${@:2}"; }
  bf="--set train.precision=bf16"
  run 1 $bf --set train.run_dir=single_bf >log_1 2>&1 \
    || fail "np 1 bf16 run failed: $(tail -5 log_1)"
  run 2 $bf --set train.pipeline_stages=2 --set train.run_dir=pipe_bf >log_2 2>&1 \
    || fail "bf16 pipeline run failed: $(tail -5 log_2)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe_f32 >log_3 2>&1 || fail "fp32 pipeline run failed: $(tail -5 log_3)"
  run 2 $bf --set train.run_dir=dp_bf >log_4 2>&1 || fail "bf16 data-parallel run failed: $(tail -5 log_4)"
  run 2 --set train.run_dir=dp_f32 >log_5 2>&1 || fail "fp32 data-parallel run failed: $(tail -5 log_5)"
  for l in log_1 log_2 log_4; do grep -q "precision bf16 on the CPU" $l || fail "$l: no bf16 line: $(head -5 $l)"; done
  grep -q "weights identical on all 2 ranks" log_4 || fail "bf16 data-parallel replicas differ: $(tail -5 log_4)"
  compare_curves single_bf pipe_bf 0 || fail "the 2-stage bf16 metrics differ from the one-process bf16 ones"
  cmp single_bf/checkpoints/step-0000000040.safetensors pipe_bf/checkpoints/step-0000000040.safetensors \
    || fail "the 2-stage bf16 checkpoint differs from the one-process bf16 one"
  for pair in "pipe_f32 pipe_bf" "dp_f32 dp_bf"; do
    python3 - $pair <<'PY' || fail "bf16 vs fp32 ($pair)"
import json, sys
def losses(d):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(d + "/metrics.jsonl")) if r.get("type") == "step"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 40 and [s for s, _ in a] == [s for s, _ in b], (len(a), len(b))
rel = [abs(x - y) / abs(x) for (_, x), (_, y) in zip(a, b)]
blocks = [abs(sum(x for _, x in a[k:k + 10]) - sum(y for _, y in b[k:k + 10])) / sum(x for _, x in a[k:k + 10])
          for k in range(0, 40, 10)]
print(f"{sys.argv[2]} vs {sys.argv[1]}: loss {a[0][1]:.4f} -> {a[-1][1]:.4f} (fp32), {b[-1][1]:.4f} (bf16); "
      f"first 10 steps within {max(rel[:10]):.3g}, 10-step means within {max(blocks):.3g}")
assert max(rel[:10]) <= 0.02, ("bf16 loss too far from fp32 in the first 10 steps", rel[:10])
assert max(blocks) <= 0.10, ("bf16 10-step mean loss too far from fp32", blocks)
assert max(rel) > 1e-5, ("bf16 loss curve equals fp32: bf16 not applied", max(rel))
PY
  done
  ;;
train_pipeline_resume_np2)
  # LeNet-5, 6 steps straight on one process against 3 steps on 2 stages resumed on one process,
  # and 3 steps on one process resumed on 2 stages: checkpoints hold the whole model under its own
  # names, so both give the straight run's bytes (weights and momentum). Then hpdl eval reads one.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "${@:2}" \
            --set data.batch_size=32 --set data.workers=1; }
  lenet="$ex/fashion_mnist/lenet5.toml"
  run 1 "$lenet" --set train.max_steps=6 --set train.run_dir=straight >log_a 2>&1 || fail "straight run failed: $(tail -5 log_a)"
  run 2 "$lenet" --set train.max_steps=3 --set train.pipeline_stages=2 --set train.run_dir=p2s1 >log_b 2>&1 \
    || fail "pipeline chunk failed: $(tail -5 log_b)"
  run 1 --resume p2s1 --set train.max_steps=6 --set train.pipeline_stages=1 >log_c 2>&1 \
    || fail "2 stages -> 1 resume failed: $(tail -5 log_c)"
  grep -q "resumed from" log_c || fail "did not resume: $(tail -5 log_c)"
  cmp straight/checkpoints/step-0000000006.safetensors p2s1/checkpoints/step-0000000006.safetensors \
    || fail "2 stages resumed on 1 differ from the straight run"
  run 1 "$lenet" --set train.max_steps=3 --set train.run_dir=p1s2 >log_d 2>&1 || fail "single chunk failed: $(tail -5 log_d)"
  run 2 --resume p1s2 --set train.max_steps=6 --set train.pipeline_stages=2 >log_e 2>&1 \
    || fail "1 -> 2 stages resume failed: $(tail -5 log_e)"
  grep -q "resumed from" log_e || fail "did not resume: $(tail -5 log_e)"
  cmp straight/checkpoints/step-0000000006.safetensors p1s2/checkpoints/step-0000000006.safetensors \
    || fail "1 stage resumed on 2 differs from the straight run"
  evaluates p1s2 "pipeline"
  ;;
train_pipeline_np4)
  # Two pipelines of two stages (4 ranks, 2 micro-batches) against 2-rank data parallelism: the same
  # global batch and shards, so the same loss curve up to float summation order, and the replicas agree.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set model.hidden=[64] --set data.batch_size=32 --set data.workers=1 --set train.max_steps=12 \
            --set train.log_every=1 "${@:2}"; }
  run 2 --set train.run_dir=dp >log_a 2>&1 || fail "data-parallel run failed: $(tail -5 log_a)"
  run 4 --set train.pipeline_stages=2 --set train.micro_batches=2 --set train.run_dir=grid >log_b 2>&1 \
    || fail "2 x 2 pipeline run failed: $(tail -5 log_b)"
  grep -q "pipeline: 2 stages x 2 replica(s)" log_b || fail "no grid line: $(head -3 log_b)"
  grep -q "each stage's weights identical in all 2 replicas" log_b || fail "replicas differ: $(tail -5 log_b)"
  compare_curves dp grid 1e-4 || fail "the 2 x 2 grid's loss curve differs from data parallelism"
  # bfloat16 on the replicas' wire, in small buckets: the replicas still agree, and the curve stays
  # within bfloat16's rounding of the float32 one (the loss: one sample more or less right moves
  # a batch's accuracy by 1/64).
  run 4 --set train.pipeline_stages=2 --set train.micro_batches=2 --set train.bf16_wire=true \
    --set train.bucket_mb=0.01 --set train.run_dir=grid16 >log_e 2>&1 || fail "2 x 2 bf16-wire run failed: $(tail -5 log_e)"
  grep -q "each stage's weights identical in all 2 replicas" log_e || fail "bf16-wire replicas differ: $(tail -5 log_e)"
  compare_curves grid grid16 2e-2 loss || fail "the bf16-wire grid's loss curve strays from the float32 grid's"
  # A whole epoch (640 training samples: 10 steps of 2 x 32): its record counts the replicas' buckets
  # and the time rank 0's stage waited for them after its last backward.
  run 4 --set train.pipeline_stages=2 --set train.micro_batches=2 --set train.max_steps=0 --set data.validation=59360 \
    --set train.epochs=1 --set train.run_dir=grid_epoch >log_f 2>&1 || fail "2 x 2 one-epoch run failed: $(tail -5 log_f)"
  python3 - grid_epoch/metrics.jsonl <<'PY' || fail "the grid's epoch record lacks its sync traffic: $(grep epoch grid_epoch/metrics.jsonl)"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
e = [r for r in recs if r.get("type") == "epoch"]
assert len(e) == 1, len(e)
e = e[0]
assert e["step"] == 10, e["step"]
assert e["sync_allreduces"] >= 10 and e["sync_allreduces"] % 10 == 0, e["sync_allreduces"]
assert 0 <= e["replica_wait_s"] < 60, e["replica_wait_s"]
PY
  # The replicas' traffic is counted: rank 0 (stage 0) sends the same buckets every step, in bfloat16.
  python3 - grid16/summary.json grid/summary.json <<'PY' || fail "the grid's sync traffic is not counted as expected"
import json, sys
s16, s32 = (json.load(open(p)) for p in sys.argv[1:3])
n = s16["sync_allreduces"]
assert n > s16["steps"] and n % s16["steps"] == 0, (n, s16["steps"])
assert abs(s16["sync_allreduce_mb"] * 2 - s32["sync_allreduce_mb"]) < 1e-9, (s16["sync_allreduce_mb"], s32["sync_allreduce_mb"])
PY
  # With batch norm: each replica's running statistics come from its own shard; replica 0's are
  # kept (as data parallelism keeps rank 0's), so the replicas end identical and match np 2.
  bn=(--set data.batch_size=16 --set train.max_steps=4 --set train.checkpoint_every_epochs=0)
  runbn() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train \
              "$ex/fashion_mnist/custom_cnn.toml" --set data.workers=1 --set train.log_every=1 "${bn[@]}" "${@:2}"; }
  runbn 2 --set train.run_dir=dp_bn >log_c 2>&1 || fail "data-parallel BN run failed: $(tail -5 log_c)"
  runbn 4 --set train.pipeline_stages=2 --set train.run_dir=grid_bn >log_d 2>&1 \
    || fail "2 x 2 pipeline run with batch norm failed: $(tail -5 log_d)"
  grep -q "each stage's weights identical in all 2 replicas" log_d || fail "BN replicas differ: $(tail -5 log_d)"
  compare_curves dp_bn grid_bn 1e-4 || fail "the 2 x 2 grid's loss curve with batch norm differs from data parallelism"
  ;;
train_pipeline_zero_np4)
  # ZeRO-1 over a pipeline's replicas (2 stages x 2 replicas): each stage's AdamW state lives half on
  # each replica's rank of that stage, and moves no bit of the result: the checkpoint (weights and
  # the gathered state) is the unsharded grid's, byte for byte, straight and resumed mid-run.
  run() { "$mpirun" --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set model.hidden=[64,32] --set data.batch_size=32 --set data.workers=1 --set optimizer.name=adamw \
            --set optimizer.lr=0.001 --set train.pipeline_stages=2 --set train.micro_batches=2 "$@"; }
  run --set train.max_steps=8 --set train.run_dir=plain >log_a 2>&1 || fail "unsharded grid run failed: $(tail -5 log_a)"
  run --set train.max_steps=8 --set train.shard_optimizer=true --set train.run_dir=zero >log_b 2>&1 \
    || fail "sharded grid run failed: $(tail -5 log_b)"
  grep -q "each stage's weights identical in all 2 replicas" log_b || fail "sharded replicas differ: $(tail -5 log_b)"
  grep -q '"shard_optimizer": true' zero/summary.json || fail "summary.json lacks shard_optimizer"
  cmp plain/checkpoints/step-0000000008.safetensors zero/checkpoints/step-0000000008.safetensors \
    || fail "the sharded grid's checkpoint differs from the unsharded grid's"
  # The state per rank: the 4 ranks of the sharded run hold half of what the unsharded ranks hold.
  python3 - log_a log_b <<'PY' || fail "the per-rank optimizer state is not halved: $(grep 'state per rank' log_a log_b)"
import re, sys
def per_rank(p):
    m = re.search(r"optimizer state per rank: ([0-9., ]+) MiB", open(p).read())
    return [float(v) for v in m.group(1).split(",")]
a, b = per_rank(sys.argv[1]), per_rank(sys.argv[2])
assert len(a) == len(b) == 4, (a, b)
assert abs(sum(a) - 2 * sum(b)) <= 0.02 * len(a), (a, b)
PY
  run --set train.max_steps=4 --set train.shard_optimizer=true --set train.run_dir=zero_r >log_c 2>&1 \
    || fail "first sharded chunk failed: $(tail -5 log_c)"
  resume_to_bytes 4 zero_r 8 plain "the sharded grid resumed at step 4"
  ;;
train_pipeline_refused_np2)
  # What pipelines cannot do is refused by name, before training.
  try() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$@" --set train.max_steps=1 \
            --set data.batch_size=8 --set data.workers=1 --set train.run_dir=run >log 2>&1; }
  try "$ex/fashion_mnist/mlp.toml" --set train.pipeline_stages=3 && fail "3 stages on 2 ranks were accepted"
  grep -q "train.pipeline_stages = 3 does not divide the 2 rank(s) of this run" log || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/lstm.toml" --set train.pipeline_stages=2 && fail "an LSTM pipeline was accepted"
  grep -q 'train.pipeline_stages = 2: model.name = "lstm" is not a sequence of layers' log || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/mlp.toml" --set train.pipeline_stages=2 --set "train.pipeline_split_points=[99]" \
    && fail "a split point past the model's layers was accepted"
  grep -q 'train.pipeline_split_points\[0\] = 99 is not below the .* layers of model.name = "mlp"' log \
    || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/mlp.toml" --set train.pipeline_stages=2 --set train.shard_optimizer=true \
    --set train.zero_stage=2 && fail "pipeline + ZeRO-2 was accepted"
  grep -q "train.pipeline_stages = 2 cannot be combined with train.zero_stage = 2" log || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/mlp.toml" --set train.pipeline_stages=2 --set train.micro_batches=8 --set data.validation=59996 \
    && fail "a last batch that does not split into micro-batches was accepted"
  grep -q "train.micro_batches = 8: the last batch of each epoch holds 4 samples" log || fail "unclear error: $(tail -3 log)"
  ;;
train_pipeline_clip_np2)
  # optimizer.clip_grad_norm over 2 stages: the norm spans both stages' parameters, added in the
  # whole model's order, so with one micro-batch the run is bitwise the one-process run with the same
  # clip (checkpoint bytes, loss curve, grad_norm); 4 micro-batches (1f1b) differ in float sums only.
  # clip 0.3 binds on most of the 30 steps (the logged norms, before clipping, are checked).
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
            --set model.hidden=[64] --set data.batch_size=32 --set data.workers=1 --set train.max_steps=30 \
            --set train.log_every=1 --set optimizer.clip_grad_norm=0.3 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed: $(tail -5 log_2)"
  run 2 --set train.pipeline_stages=2 --set train.micro_batches=4 --set train.pipeline_schedule=1f1b \
    --set train.run_dir=pipe_m4 >log_3 2>&1 || fail "1f1b pipeline run failed: $(tail -5 log_3)"
  cmp single/checkpoints/step-0000000030.safetensors pipe/checkpoints/step-0000000030.safetensors \
    || fail "the clipped 2-stage checkpoint differs from the single-process one"
  compare_curves single pipe 0 || fail "the clipped 2-stage metrics differ from the single-process ones"
  compare_curves single pipe_m4 1e-4 || fail "the clipped 4-micro-batch loss curve is off"
  python3 - single/metrics.jsonl pipe/metrics.jsonl pipe_m4/metrics.jsonl <<'PY' || fail "grad_norm differs or the clip did not bind"
import json, sys
a, b, c = ([r["grad_norm"] for r in map(json.loads, open(p)) if r.get("type") == "step"] for p in sys.argv[1:])
assert len(a) == len(b) == len(c) == 30, (len(a), len(b), len(c))
assert a == b, [(x, y) for x, y in zip(a, b) if x != y][:3]
worst = max(abs(x - z) / x for x, z in zip(a, c))
assert worst <= 1e-4, worst
bound = sum(x > 0.3 for x in a)
assert bound >= 20, f"the clip bound on {bound} of 30 steps only: {a}"
print(f"grad_norm: 2 stages bitwise; 4 micro-batches within {worst:.2g}; clip bound on {bound} of 30 steps")
PY
  ;;
train_pipeline_regression_np2)
  # A regression loss through 2 stages: the targets (float, one per sample) travel with the batch to
  # every stage and the last one scores them with the objective (huber here; RMSE, MAE, R^2). With one
  # micro-batch the run is bitwise the one-process run: checkpoint bytes, loss curve, test metrics;
  # mse with 2 micro-batches (1f1b) differs in float sums only.
  "${PYTHON:-python3}" "$ex/regression/make_oscillator.py" data --train 512 --test 128 >/dev/null \
    || fail "the oscillator data generator failed"
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train \
            "$ex/regression/oscillator.toml" --set data.path=data --set data.workers=1 --set train.epochs=8 \
            --set data.batch_size=32 --set optimizer.lr=0.01 --set train.log_every=1 --set train.loss=huber \
            --set train.huber_delta=0.5 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed: $(tail -5 log_2)"
  run 1 --set train.loss=mse --set train.run_dir=single_mse >log_3 2>&1 || fail "np 1 mse run failed: $(tail -5 log_3)"
  run 2 --set train.loss=mse --set train.pipeline_stages=2 --set train.micro_batches=2 --set train.pipeline_schedule=1f1b \
    --set train.run_dir=pipe_mse >log_4 2>&1 || fail "mse pipeline run failed: $(tail -5 log_4)"
  grep -q "pipeline: 2 stages x 1 replica(s)" log_2 || fail "no pipeline line: $(head -3 log_2)"
  cmp single/checkpoints/step-0000000128.safetensors pipe/checkpoints/step-0000000128.safetensors \
    || fail "the 2-stage regression checkpoint differs from the single-process one"
  python3 - single pipe single_mse pipe_mse <<'PY' || fail "the regression metrics differ"
import json, sys
def run(d):
    steps = [r for r in map(json.loads, open(d + "/metrics.jsonl")) if r.get("type") == "step"]
    return steps, json.load(open(d + "/summary.json"))
(a, sa), (b, sb), (c, sc), (d, sd) = (run(p) for p in sys.argv[1:])
assert len(a) == len(b) == 128 and len(c) == len(d) == 128, (len(a), len(b), len(c), len(d))
assert sa["loss"] == sb["loss"] == "huber" and sd["loss"] == "mse" and sb["pipeline_stages"] == 2, (sa, sb, sd)
for x, y in zip(a, b):
    assert x["loss"] == y["loss"] and x["rmse"] == y["rmse"], (x, y)
worst = 0.0
for x, y in zip(c, d):
    for k in ("loss", "rmse"):
        e = abs(x[k] - y[k]) / abs(x[k]); worst = max(worst, e)
        assert e <= 1e-4, (x["step"], k, x[k], y[k])
for k in ("test_loss", "test_rmse", "test_mae", "test_r2"):
    assert sa[k] == sb[k], (k, sa[k], sb[k])
    assert abs(sc[k] - sd[k]) <= 1e-4 * max(1.0, abs(sc[k])), (k, sc[k], sd[k])
assert "test_accuracy" not in sb, sb
assert sa["test_r2"] > 0.8, sa["test_r2"]  # it learns (measured 0.92 in 128 steps)
print(f"huber: bitwise; mse over 2 micro-batches within {worst:.2g}; test RMSE {sb['test_rmse']:.4g}, R2 {sb['test_r2']:.4g}")
PY
  ;;
train_tp_clip_np2)
  # optimizer.clip_grad_norm with the tiny vit's encoder layers split over 2 ranks: the norm is the full
  # model's (split parameters' slices summed over the ranks, replicated ones once), so the clipped run
  # follows the one-process run with the same clip as the unclipped ones do (float summation order
  # only): loss curve and grad_norm within 1e-5, weights and momentum within 5e-5. clip 0.5 binds.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set train.max_steps=6 --set train.log_every=1 \
            --set optimizer.clip_grad_norm=0.5 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.tensor_parallel=2 --set train.run_dir=tp >log_2 2>&1 || fail "tensor-parallel run failed: $(tail -5 log_2)"
  grep -q "tensor-parallel check: replicated weights identical in each group of 2" log_2 \
    || fail "the replicated weights differ within the group: $(tail -5 log_2)"
  compare_curves single tp 1e-5 || fail "the clipped tensor-parallel loss curve differs from one process"
  compare_checkpoints single/checkpoints/step-0000000006.safetensors tp/checkpoints/step-0000000006.safetensors 5e-5 \
    || fail "the clipped tensor-parallel checkpoint differs from one process"
  python3 - single/metrics.jsonl tp/metrics.jsonl <<'PY' || fail "grad_norm differs or the clip did not bind"
import json, sys
a, b = ([r["grad_norm"] for r in map(json.loads, open(p)) if r.get("type") == "step"] for p in sys.argv[1:])
assert len(a) == len(b) == 6, (len(a), len(b))
worst = max(abs(x - y) / x for x, y in zip(a, b))
assert worst <= 1e-5, (worst, a, b)
bound = sum(x > 0.5 for x in a)
assert bound >= 4, f"the clip bound on {bound} of 6 steps only: {a}"
print(f"grad_norm within {worst:.2g} of one process; clip bound on {bound} of 6 steps")
PY
  ;;
train_tp_np2)
  # The tiny vit, one epoch of 96 training samples (6 steps; the rest of the training set is held
  # out, 59904 validation samples, and evaluated with the test set), checkpoints at steps 3 and 6:
  # tensor_parallel = 2 on 2 ranks against one process. Only the order of float sums differs (the row-parallel layers' partial products are
  # summed across the ranks), so the loss curves agree to 1e-5 and the weights and momentum to 5e-5
  # of each tensor's largest element. Then each run's step-3 checkpoint resumes at the other P: a
  # checkpoint is the whole model (and momentum) under its own names, whatever P wrote it.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "${@:2}" $tiny_vit \
            --set data.batch_size=16 --set data.workers=1 --set data.validation=59904 --set train.epochs=1 \
            --set train.log_every=1 --set train.checkpoint_every_steps=3 --set train.keep_checkpoints=3; }
  vit="$ex/fashion_mnist/vit.toml"
  run 1 "$vit" --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 "$vit" --set train.tensor_parallel=2 --set train.run_dir=tp >log_2 2>&1 || fail "tensor-parallel run failed: $(tail -5 log_2)"
  grep -q "tensor parallel: groups of 2 rank(s) x 1 replica(s)" log_2 || fail "no tensor-parallel line: $(head -3 log_2)"
  grep -q "tensor-parallel check: replicated weights identical in each group of 2" log_2 \
    || fail "the replicated weights differ within the group: $(tail -5 log_2)"
  compare_curves single tp 1e-5 || fail "the tensor-parallel loss curve differs from one process"
  step6=checkpoints/step-0000000006.safetensors
  compare_checkpoints single/$step6 tp/$step6 5e-5 || fail "the tensor-parallel checkpoint (weights, momentum) differs from one process"
  python3 - single/summary.json tp/summary.json <<'PY' || fail "bad summaries"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["tensor_parallel"] == 1 and b["tensor_parallel"] == 2, (a, b)
# The encoder layers' split weights are half on each rank; the rest is whole.
assert a["parameters_per_rank"] / 2 < b["parameters_per_rank"] < a["parameters_per_rank"], (a, b)
# Evaluation: every rank of the group computes the same logits; they count once.
for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
    assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
PY
  python3 - single/metrics.jsonl tp/metrics.jsonl <<'PY' || fail "the epoch's sample count or loss differs"
import json, sys
a, b = ([r for r in map(json.loads, open(p)) if r.get("type") == "epoch"] for p in sys.argv[1:])
assert len(a) == len(b) == 1 and a[0]["samples"] == b[0]["samples"] == 96, (a, b)
assert abs(a[0]["train_loss"] - b[0]["train_loss"]) <= 1e-5 * abs(a[0]["train_loss"]), (a, b)
PY
  # P = 2 -> 1 and 1 -> 2, from step 3 to 6.
  for from_to in "tp 1" "single 2"; do
    set -- $from_to; dir=resume_from_$1
    cp -r "$1" "$dir" && rm "$dir"/checkpoints/step-0000000006.* || fail "cannot copy $1"
    run "$2" --resume "$dir" --set train.tensor_parallel="$2" >log_$dir 2>&1 || fail "resume of $1 at P = $2 failed: $(tail -5 log_$dir)"
    grep -q "resumed from .*step-0000000003" log_$dir || fail "did not resume from step 3: $(tail -5 log_$dir)"
    compare_checkpoints single/$step6 "$dir/$step6" 5e-5 || fail "$1 resumed at P = $2 differs from the straight run"
  done
  # A checkpoint written at P = 2 is an ordinary one: hpdl eval reads it.
  evaluates resume_from_single "tensor-parallel"
  ;;
train_tp_np4)
  # Two groups of two (4 ranks) against 2-rank data parallelism: the same global batch and shards,
  # so the same loss curve up to float summation order, and the replicas agree.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set train.max_steps=5 --set train.log_every=1 "${@:2}"; }
  run 2 --set train.run_dir=dp >log_a 2>&1 || fail "data-parallel run failed: $(tail -5 log_a)"
  run 4 --set train.tensor_parallel=2 --set train.run_dir=grid >log_b 2>&1 || fail "2 x 2 run failed: $(tail -5 log_b)"
  grep -q "tensor parallel: groups of 2 rank(s) x 2 replica(s)" log_b || fail "no grid line: $(head -3 log_b)"
  grep -q "each tensor-parallel rank's weights identical in all 2 replicas" log_b || fail "replicas differ: $(tail -5 log_b)"
  compare_curves dp grid 1e-5 || fail "the 2 x 2 grid's loss curve differs from data parallelism"
  compare_checkpoints dp/checkpoints/step-0000000005.safetensors grid/checkpoints/step-0000000005.safetensors 5e-5 \
    || fail "the 2 x 2 grid's checkpoint differs from data parallelism"
  # ZeRO-1 over the replicas: each rank's AdamW state (its slices and the replicated layers) lives
  # half on each replica, and the checkpoint is the unsharded grid's, byte for byte.
  adamw=(--set optimizer.name=adamw --set optimizer.lr=0.001 --set train.tensor_parallel=2)
  run 4 "${adamw[@]}" --set train.run_dir=grid_adamw >log_c 2>&1 || fail "2 x 2 AdamW run failed: $(tail -5 log_c)"
  run 4 "${adamw[@]}" --set train.shard_optimizer=true --set train.run_dir=grid_zero >log_d 2>&1 \
    || fail "2 x 2 sharded run failed: $(tail -5 log_d)"
  grep -q "optimizer state per rank: .* MiB (sharded)" log_d || fail "no sharded state line: $(tail -3 log_d)"
  grep -q "each tensor-parallel rank's weights identical in all 2 replicas" log_d || fail "sharded replicas differ: $(tail -5 log_d)"
  cmp grid_adamw/checkpoints/step-0000000005.safetensors grid_zero/checkpoints/step-0000000005.safetensors \
    || fail "the sharded tensor-parallel grid's checkpoint differs from the unsharded one"
  run 4 "${adamw[@]}" --set train.shard_optimizer=true --set train.max_steps=3 --set train.run_dir=grid_zero_r >log_e 2>&1 \
    || fail "first sharded chunk failed: $(tail -5 log_e)"
  resume_to_bytes 4 grid_zero_r 5 grid_adamw "the sharded tensor-parallel grid resumed at step 3"
  ;;
train_tp_refused_np2)
  # What tensor parallelism cannot do is refused by name, before training.
  try() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$@" --set train.max_steps=1 \
            --set data.batch_size=8 --set data.workers=1 --set train.run_dir=run >log 2>&1; }
  try "$ex/fashion_mnist/vit.toml" --set model.heads=8 --set train.tensor_parallel=4 && fail "P = 4 on 2 ranks was accepted"
  grep -q "train.tensor_parallel = 4 does not divide the 2 rank(s) of this run" log || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/mlp.toml" --set train.tensor_parallel=2 && fail "a tensor-parallel MLP was accepted"
  grep -q 'train.tensor_parallel = 2 cannot be combined with model.name = "mlp"' log || fail "unclear error: $(tail -3 log)"
  try "$ex/fashion_mnist/vit.toml" --set train.tensor_parallel=2 --set train.pipeline_stages=2 \
    && fail "2 stages x 2 tensor-parallel ranks on 2 ranks were accepted"
  grep -q "train.pipeline_stages = 2 x train.tensor_parallel = 2 does not divide the 2 rank(s) of this run" log \
    || fail "unclear error: $(tail -3 log)"
  ;;
train_tp_pipeline_np4)
  # Pipeline stages each split over a tensor-parallel group (the 3-D grid's model axes): the tiny vit
  # on 2 stages x 2 ranks against one process, 6 steps, checkpoints at steps 3 and 6. Only float
  # summation order differs (the row-parallel sums; micro-batches), so curves agree to 1e-5 and the
  # weights and momentum to 5e-5 of each tensor's largest element. The checkpoint is the whole vit:
  # the grid's step 3 resumes on one process and one process's on the grid, both to the straight run.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set data.validation=59904 --set train.epochs=1 \
            --set train.log_every=1 --set train.checkpoint_every_steps=3 --set train.keep_checkpoints=3 "${@:2}"; }
  grid="--set train.pipeline_stages=2 --set train.tensor_parallel=2"
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 4 $grid --set train.run_dir=grid >log_2 2>&1 || fail "grid run failed: $(tail -5 log_2)"
  grep -q "tensor parallel: groups of 2 rank(s) x 1 replica(s)" log_2 || fail "no tensor-parallel line: $(head -3 log_2)"
  grep -q "pipeline: 2 stages x 1 replica(s), 1 micro-batches per batch (gpipe); stages begin at layers 0, 2 of 4" log_2 \
    || fail "no pipeline line: $(grep pipeline log_2)"
  grep -q "tensor-parallel check: replicated weights identical in each group of 2" log_2 || fail "no check: $(tail -5 log_2)"
  run 4 $grid --set train.micro_batches=4 --set train.pipeline_schedule=1f1b --set train.activation_checkpointing=true \
    --set train.run_dir=grid_m4 >log_3 2>&1 || fail "1f1b grid run failed: $(tail -5 log_3)"
  grep -q "activation checkpointing: stage 0: 1 segments: each tensor-parallel encoder layer" log_3 \
    || fail "no checkpointing line: $(grep checkpointing log_3)"
  step6=checkpoints/step-0000000006.safetensors
  for run_dir in grid grid_m4; do
    compare_curves single $run_dir 1e-5 || fail "$run_dir's loss curve differs from one process"
    compare_checkpoints single/$step6 $run_dir/$step6 5e-5 || fail "$run_dir's checkpoint differs from one process"
  done
  # Clipping by the whole model's norm (0.5 binds on all 6 steps: norms 2-5): the stages' sums of the
  # full parameters (split ones summed over the group) in the vit's parameter order.
  run 1 --set optimizer.clip_grad_norm=0.5 --set train.run_dir=single_clip >log_4 2>&1 || fail "np 1 clip run failed: $(tail -5 log_4)"
  run 4 $grid --set optimizer.clip_grad_norm=0.5 --set train.run_dir=grid_clip >log_5 2>&1 \
    || fail "grid clip run failed: $(tail -5 log_5)"
  compare_curves single_clip grid_clip 1e-5 loss,accuracy,grad_norm || fail "the clipped grid's curve or norm is off"
  python3 - single_clip/metrics.jsonl <<'PY' || fail "the clip did not bind on every step"
import json, sys
n = [r["grad_norm"] for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "step"]
assert len(n) == 6 and min(n) > 0.5, n
PY
  python3 - single/summary.json grid/summary.json <<'PY' || fail "bad summaries"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert b["tensor_parallel"] == 2 and b["pipeline_stages"] == 2, b
for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
    assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
PY
  python3 - grid/metrics.jsonl <<'PY' || fail "the epoch's sample count is off (each group must count once)"
import json, sys
e = [r for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "epoch"]
assert len(e) == 1 and e[0]["samples"] == 96, e
PY
  python3 - grid/checkpoints/step-0000000006.json <<'PY' || fail "the sidecar does not record the grid"
import json, sys
extra = json.load(open(sys.argv[1]))["extra"]
assert extra["pipeline_stages"] == 2 and extra["tensor_parallel"] == 2 and extra["world"] == 1, extra
PY
  for from_to in "grid 1" "single 4"; do
    set -- $from_to; dir=resume_from_$1
    cp -r "$1" "$dir" && rm "$dir"/checkpoints/step-0000000006.* || fail "cannot copy $1"
    if [[ $2 == 4 ]]; then more=$grid; else more=""; fi
    run "$2" --resume "$dir" $more >log_$dir 2>&1 || fail "resume of $1 on $2 rank(s) failed: $(tail -5 log_$dir)"
    grep -q "resumed from .*step-0000000003" log_$dir || fail "did not resume from step 3: $(tail -5 log_$dir)"
    compare_checkpoints single/$step6 "$dir/$step6" 5e-5 || fail "$1 resumed on $2 rank(s) differs from the straight run"
  done
  ;;
train_tp_pipeline_np8)
  # The whole 3-D grid: 2 replicas x 2 stages x 2 tensor-parallel ranks against 2-rank data
  # parallelism (the same global batch of 32 and shards): curves within 1e-5, checkpoints within
  # 5e-5, and the replicas of each stage's slices bitwise equal at the end (the replica check).
  # Then ZeRO-1 in the grid.
  run() { "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/vit.toml" \
            $tiny_vit --set data.batch_size=16 --set data.workers=1 --set data.validation=59904 --set train.epochs=1 \
            --set train.log_every=1 --set train.eval_every_epochs=0 "${@:2}"; }
  run 2 --set train.run_dir=dp >log_1 2>&1 || fail "data-parallel run failed: $(tail -5 log_1)"
  run 8 --set train.pipeline_stages=2 --set train.tensor_parallel=2 --set train.micro_batches=2 --set train.run_dir=grid \
    >log_2 2>&1 || fail "grid run failed: $(tail -5 log_2)"
  grep -q "pipeline: 2 stages x 2 replica(s), 2 micro-batches per batch" log_2 || fail "no grid line: $(grep pipeline log_2)"
  grep -q "replica check: each stage's tensor-parallel rank's weights identical in all 2 replicas" log_2 \
    || fail "no replica check: $(tail -5 log_2)"
  compare_curves dp grid 1e-5 || fail "the grid's loss curve differs from data parallelism's"
  compare_checkpoints dp/checkpoints/step-0000000003.safetensors grid/checkpoints/step-0000000003.safetensors 5e-5 \
    || fail "the grid's checkpoint differs from data parallelism's"
  # ZeRO-1 over the replicas of each slice of each stage (AdamW) moves no bit: the checkpoint (weights
  # and the gathered state) is the unsharded grid's byte for byte, straight and resumed after step 2.
  adam="--set optimizer.name=adamw --set optimizer.lr=0.001 --set train.pipeline_stages=2 --set train.tensor_parallel=2"
  run 8 $adam --set train.run_dir=adam >log_5 2>&1 || fail "AdamW grid run failed: $(tail -5 log_5)"
  run 8 $adam --set train.shard_optimizer=true --set train.run_dir=adam_zero >log_6 2>&1 \
    || fail "sharded grid run failed: $(tail -5 log_6)"
  grep -q "(sharded)" log_6 || fail "the optimizer state was not sharded: $(grep 'state per rank' log_6)"
  step3=checkpoints/step-0000000003.safetensors
  cmp adam/$step3 adam_zero/$step3 || fail "the sharded grid's checkpoint differs from the unsharded grid's"
  run 8 $adam --set train.shard_optimizer=true --set train.max_steps=2 --set train.run_dir=adam_zero_r >log_7 2>&1 \
    || fail "first sharded chunk failed: $(tail -5 log_7)"
  run 8 $adam --set train.shard_optimizer=true --resume adam_zero_r >log_8 2>&1 || fail "sharded resume failed: $(tail -5 log_8)"
  grep -q "resumed from .*step-0000000002" log_8 || fail "did not resume from step 2: $(tail -5 log_8)"
  cmp adam/$step3 adam_zero_r/$step3 || fail "the resumed sharded grid differs from the straight run"
  ;;
train_pipeline_ckpt_np2)
  # train.activation_checkpointing in a 2-stage 1F1B pipeline of 4 micro-batches: a small custom CNN
  # with batch norm and dropout on stage 0 (layers 0-6; its backward of micro-batch m recomputes after
  # micro-batch m+1's forward has drawn its dropout masks) and dropout on stage 1 too. The same step
  # records bit for bit, the same checkpoint bytes (weights, running statistics, generators).
  { printf '[data]\ndataset = "fashion-mnist"\n[model]\nname = "custom"\n'
    for l in 'type = "conv2d"\nout_channels = 8\nkernel_size = 3\npadding = 1\nbias = false' \
             'type = "batchnorm2d"' 'type = "relu"' 'type = "dropout"\np = 0.2' 'type = "maxpool2d"\nkernel_size = 2' \
             'type = "conv2d"\nout_channels = 16\nkernel_size = 3\npadding = 1' 'type = "batchnorm2d"' 'type = "relu"' \
             'type = "maxpool2d"\nkernel_size = 2' 'type = "flatten"' 'type = "dropout"\np = 0.3' \
             'type = "linear"\nout_features = 32' 'type = "relu"' 'type = "linear"\nout_features = 10'; do
      printf '[[model.layers]]\n%b\n' "$l"
    done
    printf '[optimizer]\nname = "sgd"\nlr = 0.05\nmomentum = 0.9\n[train]\nseed = 3\n'; } >cnn.toml
  for ck in false true; do
    "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train cnn.toml \
      --set train.pipeline_stages=2 --set train.micro_batches=4 --set train.pipeline_schedule=1f1b \
      --set data.batch_size=16 --set data.workers=1 --set train.log_every=1 --set train.max_steps=6 \
      --set train.activation_checkpointing=$ck --set train.run_dir=run_$ck >log_$ck 2>&1 \
      || fail "activation_checkpointing=$ck failed: $(tail -5 log_$ck)"
  done
  grep -q "stages begin at layers 0, 7 of 14" log_true || fail "unexpected stages: $(head -3 log_true)"
  grep -q "activation checkpointing: stage 0: 3 segments of up to 3 of its 7 layers" log_true \
    || fail "no segments line: $(head -5 log_true)"
  same_steps_and_checkpoint run_false run_true 6 || fail "checkpointing changed the pipeline's training"
  ;;
train_tp_ckpt_np2)
  # train.activation_checkpointing with tensor_parallel = 2 (the tiny vit with model.dropout = 0.1): each
  # encoder layer slice is one segment whose recompute runs its forward allreduce again in backward and
  # replays the dropout masks each rank drew. Same step records bit for bit, same checkpoint bytes; a
  # resume from step 3 (each rank's dropout generators come back from the checkpoint) ends on the same
  # bytes again; and the dropout-free run differs, so the masks were really drawn.
  run() { "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$@" $tiny_vit \
            --set train.tensor_parallel=2 --set data.batch_size=16 --set data.workers=1 --set train.log_every=1 \
            --set train.max_steps=6 --set train.checkpoint_every_steps=3 --set train.keep_checkpoints=3; }
  for ck in false true; do
    run "$ex/fashion_mnist/vit.toml" --set model.dropout=0.1 --set train.activation_checkpointing=$ck \
      --set train.run_dir=run_$ck >log_$ck 2>&1 || fail "activation_checkpointing=$ck failed: $(tail -5 log_$ck)"
  done
  grep -q "activation checkpointing: 2 segments: each tensor-parallel encoder layer" log_true \
    || fail "no segments line: $(head -5 log_true)"
  same_steps_and_checkpoint run_false run_true 6 || fail "checkpointing changed tensor-parallel training"
  cp -r run_true resumed && rm resumed/checkpoints/step-0000000006.* || fail "cannot copy run_true"
  run --resume resumed >log_r 2>&1 || fail "resume failed: $(tail -5 log_r)"
  grep -q "resumed from .*step-0000000003" log_r || fail "did not resume from step 3: $(tail -5 log_r)"
  cmp run_true/checkpoints/step-0000000006.safetensors resumed/checkpoints/step-0000000006.safetensors \
    || fail "the resumed tensor-parallel run with dropout differs from the straight one"
  run "$ex/fashion_mnist/vit.toml" --set model.dropout=0 --set train.run_dir=no_dropout >log_n 2>&1 \
    || fail "dropout-free run failed: $(tail -5 log_n)"
  cmp -s run_false/checkpoints/step-0000000006.safetensors no_dropout/checkpoints/step-0000000006.safetensors \
    && fail "model.dropout = 0.1 trained exactly as model.dropout = 0"
  ;;
train_early_stop_np2)
  # Early stopping and train.keep_best under mpirun (design decision 72): both ranks stop after the same
  # epoch (rank 0's value of the monitored metric decides; a rank that went on would hang in the next
  # collective, so each run has a time limit), and the best model is gathered like a checkpoint: a
  # 2-stage pipeline's best.safetensors is the one-process run's byte for byte, and ZeRO-3's (sharded
  # parameters) evaluates to the test metrics recorded for its epoch.
  "${PYTHON:-python3}" "$ex/regression/make_oscillator.py" data --train 512 --test 128 >/dev/null \
    || fail "the oscillator data generator failed"
  run() { timeout 120 "$mpirun" --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS=1 "$hpdl" train \
            "$ex/regression/oscillator.toml" --set data.path=data --set data.workers=1 --set train.epochs=8 \
            --set data.batch_size=32 --set data.validation=128 --set optimizer.lr=1e-9 --set train.keep_best=true \
            --set train.early_stopping_patience=2 --set train.early_stopping_min_delta=0.001 "${@:2}"; }
  run 1 --set train.run_dir=single >log_1 2>&1 || fail "np 1 run failed: $(tail -5 log_1)"
  run 2 --set train.pipeline_stages=2 --set train.run_dir=pipe >log_2 2>&1 || fail "pipeline run failed (rc $?): $(tail -5 log_2)"
  run 2 --set train.shard_optimizer=true --set train.zero_stage=3 --set train.run_dir=z3 >log_3 2>&1 \
    || fail "ZeRO-3 run failed (rc $?): $(tail -5 log_3)"
  for l in log_1 log_2 log_3; do
    grep -q "early stopping after epoch 3: val_loss has not improved for 2 evaluations" $l || fail "$l: no stop after epoch 3: $(tail -5 $l)"
  done
  grep -q "buffers identical on all 2 ranks" log_3 || fail "no replica check after the ZeRO-3 run stopped: $(tail -5 log_3)"
  cmp single/checkpoints/best.safetensors pipe/checkpoints/best.safetensors \
    || fail "the 2-stage pipeline's best model differs from the one-process run's"
  python3 - z3 >expected.txt <<'PY' || fail "summary.json of the ZeRO-3 run is wrong"
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
assert s["stopped_early"] is True and s["epochs"] == 3 and s["best_epoch"] == 1 and s["ranks"] == 2, s
rec = [r for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl")) if r.get("type") == "epoch"][0]
print("%.6g" % rec["test_rmse"])
PY
  "$hpdl" eval --checkpoint z3 --best >eval.txt 2>&1 || fail "eval --best of the ZeRO-3 run failed: $(cat eval.txt)"
  grep -q "^test RMSE $(cat expected.txt)," eval.txt || fail "eval --best: $(cat eval.txt); recorded $(cat expected.txt)"
  ;;
*) fail "unknown case" ;;
esac
echo "PASS [$case_name]"
