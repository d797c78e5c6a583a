#!/usr/bin/env bash
# CLI integration tests, one case per invocation: cli_tests.sh CASE HPDL WORKDIR.
# Each case trains briefly on the real Fashion-MNIST files and checks what a
# user would check: files in the run directory, exact resume after kill -9,
# refusal of a corrupt checkpoint, error messages, multi-rank behaviour.
set -uo pipefail
case_name=$1; hpdl=$2; work=$3/$case_name
ex=${HPDL_EXAMPLES:?}
mpirun=${MPIEXEC:-mpirun}
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
fail() { echo "FAIL [$case_name]: $*"; exit 1; }
# A small, fast, single-threaded LeNet run: bitwise reproducible.
small=(--set train.threads=1 --set data.workers=1 --set train.log_every=10 --set train.seed=7)

# A search over the mlp's lr and batch size: 4 trials, budgets of 20 to 60 steps, eta 2,
# selected on 5,000 held-out images. $1 method, $2 run_dir.
steps_search() {
  cat <<EOS
config = "$ex/fashion_mnist/mlp.toml"
method = "$1"
trials = 4
seed = 3
resource = "steps"
min_resource = 20
max_resource = 60
eta = 2
run_dir = "$2"
set = ["data.validation=5000", "train.threads=1", "data.workers=1", "train.log_every=10"]
[space]
"optimizer.lr" = { log_uniform = [0.001, 0.5] }
"data.batch_size" = { choice = [32, 64] }
EOS
}

# A tiny synthetic regression set in npy files, data/{train,test}_{x,y}.npy: 768 and 256
# samples x uniform in [-1, 1]^4, two targets y = (x0 + 2 x1 - x2, x0 x3); reg.toml trains
# a 4-32-2 mlp on them with the mean squared error (about a second).
regression_data() {
  "${PYTHON:-python3}" - <<'PY' || fail "could not write the regression data (python3-numpy)"
import os
import numpy as np
rng = np.random.default_rng(11)
os.makedirs("data", exist_ok=True)
for name, n in (("train", 768), ("test", 256)):
    x = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    y = np.stack([x[:, 0] + 2 * x[:, 1] - x[:, 2], x[:, 0] * x[:, 3]], axis=1).astype(np.float32)
    np.save(f"data/{name}_x.npy", x)
    np.save(f"data/{name}_y.npy", y)
np.save("zero.npy", np.zeros((1, 4), np.float32))
PY
  cat >reg.toml <<'EOS'
[data]
dataset = "npy"
path = "data"
batch_size = 32
normalize = false
workers = 1
[model]
name = "mlp"
num_classes = 2
hidden = [32]
[optimizer]
name = "adamw"
lr = 0.01
[train]
loss = "mse"
epochs = 6
seed = 3
threads = 1
log_every = 10
run_dir = "run"
EOS
}

run_until_checkpoint_then_kill() {  # $1 run dir, $2 step to wait for, rest: args
  local dir=$1 step=$2; shift 2
  "$hpdl" train "$@" >"$dir.log" 2>&1 &
  local pid=$! f
  f=$(printf '%s/checkpoints/step-%010d.json' "$dir" "$step")
  for _ in $(seq 600); do [[ -f $f ]] && break; sleep 0.1; done
  [[ -f $f ]] || { kill -9 $pid; fail "no checkpoint $f appeared"; }
  kill -9 $pid; wait $pid 2>/dev/null
  return 0
}

# The batch-job scripts (examples/jobs, docs/jobs.md) run outside a batch system:
# SLURM_JOB_ID or PBS_JOBID is set by hand, HPDL_LAUNCH replaces srun/mpiexec,
# and fake sbatch, scontrol and qsub on PATH record their arguments in
# $work/submits instead of submitting.
jobs=$ex/jobs
fake_batch_system() {
  mkdir -p bin
  for c in sbatch scontrol qsub qrerun; do
    printf '#!/bin/bash\necho "%s $*" >>"%s/submits"\necho "Submitted batch job 5001"\n' "$c" "$PWD" >bin/$c
    chmod +x bin/$c
  done
  : >submits
  export PATH=$PWD/bin:$PATH HPDL_BIN=$hpdl
}
# The job scripts' log without the progress lines.
job_log() { tr '\r' '\n' <"$1" | grep -v '^ *epoch [0-9]*/[0-9]*  step'; }

case $case_name in
train_short)
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.max_steps=20 --set train.run_dir=run >out.txt 2>err.txt \
    || fail "train failed: $(cat err.txt)"
  for f in run/config.toml run/metrics.jsonl run/summary.json; do [[ -s $f ]] || fail "missing $f"; done
  grep -q '"steps": 20' run/summary.json || fail "summary does not say 20 steps"
  grep -Eq '"peak_tensor_memory_mb": ([1-9]|0\.[0-9]*[1-9])' run/summary.json || fail "summary has no peak tensor memory: $(cat run/summary.json)"
  grep -q '"device": "cpu"' run/summary.json || fail "summary does not name the device"
  grep -q '"type":"step"' run/metrics.jsonl || fail "no step records in metrics.jsonl"
  ls run/checkpoints/step-0000000020.safetensors >/dev/null || fail "no final checkpoint"
  ;;
earlier_run_refused)
  # A fresh run into a run_dir holding checkpoints would overwrite and prune them: refused, the
  # earlier run untouched; train.overwrite = true starts over with that run's files removed.
  args=("$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.run_dir=run)
  "$hpdl" train "${args[@]}" --set train.max_steps=4 >first.log 2>&1 || fail "first run failed: $(tail -3 first.log)"
  cp run/metrics.jsonl first.jsonl
  "$hpdl" train "${args[@]}" --set train.max_steps=3 >out 2>err && fail "a second fresh run into the same run_dir was accepted"
  grep -q "train.run_dir = 'run' already holds 1 checkpoint(s) of an earlier run (newest step-0000000004.json)" err \
    || fail "the refusal does not name the run and its checkpoint: $(cat err)"
  grep -q -- "--resume run" err || fail "the refusal does not say how to continue: $(cat err)"
  cmp first.jsonl run/metrics.jsonl || fail "the refused run changed metrics.jsonl"
  [[ -f run/checkpoints/step-0000000004.safetensors ]] || fail "the refused run removed the earlier checkpoint"
  "$hpdl" train "${args[@]}" --set train.max_steps=3 --set train.overwrite=true >over.log 2>&1 \
    || fail "train.overwrite=true failed: $(tail -3 over.log)"
  [[ ! -e run/checkpoints/step-0000000004.json ]] || fail "train.overwrite left the earlier run's checkpoint"
  [[ -f run/checkpoints/step-0000000003.safetensors ]] || fail "no checkpoint of the new run"
  [[ $(grep -c '"type":"step"' run/metrics.jsonl) -eq $(grep -c '"step":[1-3],' run/metrics.jsonl) ]] \
    || fail "metrics.jsonl still holds the earlier run's steps: $(cat run/metrics.jsonl)"
  "$hpdl" train --resume run --set train.max_steps=5 >resume.log 2>&1 || fail "--resume was refused: $(tail -3 resume.log)"
  ;;
kill9_resume_bitwise)
  args=("$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=150 --set train.checkpoint_every_steps=10)
  "$hpdl" train "${args[@]}" --set train.run_dir=straight >straight.log 2>&1 || fail "straight run failed"
  run_until_checkpoint_then_kill interrupted 20 "${args[@]}" --set train.run_dir=interrupted
  [[ ! -f interrupted/checkpoints/step-0000000150.json ]] || fail "the run finished before kill -9: nothing tested"
  "$hpdl" train --resume interrupted >resumed.log 2>&1 || fail "resume failed: $(tail -3 resumed.log)"
  grep -q "resumed from" resumed.log || fail "resume did not report its checkpoint"
  cmp straight/checkpoints/step-0000000150.safetensors interrupted/checkpoints/step-0000000150.safetensors \
    || fail "weights after kill -9 + resume differ from the uninterrupted run"
  ;;
checkpoint_async)
  # train.checkpoint_async: the background writer writes the same bytes as the synchronous saves,
  # summary.json says so and counts them, and kill -9 in the middle of the run (a write may be in
  # flight) resumes from the newest committed checkpoint to the straight run's bytes.
  args=("$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=60 --set train.checkpoint_every_steps=10)
  "$hpdl" train "${args[@]}" --set train.run_dir=sync >sync.log 2>&1 || fail "synchronous run failed: $(tail -3 sync.log)"
  "$hpdl" train "${args[@]}" --set train.checkpoint_async=true --set train.run_dir=async >async.log 2>&1 \
    || fail "asynchronous run failed: $(tail -3 async.log)"
  for s in 40 50 60; do
    f=$(printf 'checkpoints/step-%010d.safetensors' $s)
    cmp "sync/$f" "async/$f" || fail "the background writer's $f differs from the synchronous one"
  done
  [[ $(ls async/checkpoints/*.json | wc -l) -eq 3 ]] || fail "train.keep_checkpoints=3 not kept: $(ls async/checkpoints)"
  python3 - sync/summary.json async/summary.json <<'PY' || fail "summary.json lacks the checkpoint fields"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["checkpoint_async"] is False and b["checkpoint_async"] is True, (a["checkpoint_async"], b["checkpoint_async"])
assert a["checkpoints_saved"] == b["checkpoints_saved"] >= 6, (a["checkpoints_saved"], b["checkpoints_saved"])
assert a["checkpoint_seconds"] > 0 and b["checkpoint_seconds"] > 0
PY
  run_until_checkpoint_then_kill interrupted 20 "${args[@]}" --set train.checkpoint_async=true --set train.run_dir=interrupted
  [[ ! -f interrupted/checkpoints/step-0000000060.json ]] || fail "the run finished before kill -9: nothing tested"
  "$hpdl" train --resume interrupted >resumed.log 2>&1 || fail "resume failed: $(tail -3 resumed.log)"
  grep -q "resumed from" resumed.log || fail "resume did not report its checkpoint"
  cmp sync/checkpoints/step-0000000060.safetensors interrupted/checkpoints/step-0000000060.safetensors \
    || fail "kill -9 of an asynchronous run + resume differs from the straight run"
  ;;
kill9_resume_loss_scale)
  # Dynamic loss scaling on the CPU (fp32): the scaler state (scale, growth
  # tracker, skipped steps) is checkpointed and restored; the whole file,
  # scaler tensors included, must match the uninterrupted run bitwise.
  args=("$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=60 --set train.checkpoint_every_steps=10
        --set train.loss_scale=dynamic)
  "$hpdl" train "${args[@]}" --set train.run_dir=straight >straight.log 2>&1 || fail "straight run failed: $(tail -3 straight.log)"
  grep -q '"loss_scale":65536' straight/metrics.jsonl || fail "metrics.jsonl has no loss_scale"
  grep -q 'scaler.growth_tracker' straight/checkpoints/step-0000000060.safetensors || fail "no scaler state in the checkpoint"
  run_until_checkpoint_then_kill interrupted 20 "${args[@]}" --set train.run_dir=interrupted
  [[ ! -f interrupted/checkpoints/step-0000000060.json ]] || fail "the run finished before kill -9: nothing tested"
  "$hpdl" train --resume interrupted >resumed.log 2>&1 || fail "resume failed: $(tail -3 resumed.log)"
  grep -q "resumed from" resumed.log || fail "resume did not report its checkpoint"
  cmp straight/checkpoints/step-0000000060.safetensors interrupted/checkpoints/step-0000000060.safetensors \
    || fail "weights or scaler state after kill -9 + resume differ from the uninterrupted run"
  ;;
corrupt_checkpoint_skipped)
  args=("$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.max_steps=20 --set train.checkpoint_every_steps=10 --set train.run_dir=run)
  "$hpdl" train "${args[@]}" >log 2>&1 || fail "run failed"
  f=run/checkpoints/step-0000000020.safetensors
  printf '\x55' | dd of=$f bs=1 seek=4000 conv=notrunc status=none
  "$hpdl" train --resume run --set train.max_steps=25 >resume.log 2>&1 || fail "resume failed: $(tail -3 resume.log)"
  grep -q "step-0000000020" resume.log || fail "the corrupt checkpoint was not named: $(cat resume.log)"
  grep -q "resumed from .*step-0000000010" resume.log || fail "did not fall back to step 10: $(cat resume.log)"
  ;;
bad_config)
  printf '[optimizer]\nmomentun = 0.9\n' >bad.toml
  "$hpdl" train bad.toml >out 2>err && fail "unknown key accepted"
  grep -q "optimizer.momentun" err || fail "error does not name the key: $(cat err)"
  grep -q "bad.toml" err || fail "error does not name the file: $(cat err)"
  grep -q "momentum" err || fail "no did-you-mean: $(cat err)"
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" --set data.batch_size=abc >out 2>err && fail "wrong type accepted"
  grep -q "data.batch_size" err || fail "type error does not name the key: $(cat err)"
  [[ $(wc -l <err) -le 2 ]] || fail "error is not one clear line: $(cat err)"
  ;;
missing_dataset)
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" --set data.path=/nonexistent/fashion-mnist >out 2>err && fail "missing data accepted"
  grep -q "dataset-fashion-mnist" err || fail "error does not name the package: $(cat err)"
  ;;
eval_predict)
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.max_steps=60 --set train.run_dir=run >log 2>&1 || fail "train failed"
  "$hpdl" eval --checkpoint run >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  acc=$(sed -n 's/test accuracy \([0-9.]*\)%.*/\1/p' eval.txt)
  [[ -n $acc ]] || fail "no accuracy printed: $(cat eval.txt)"
  awk -v a="$acc" 'BEGIN { exit !(a > 50) }' || fail "accuracy $acc% after 60 steps is too low"
  "$hpdl" predict --checkpoint run --limit 5 /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz >pred.txt 2>&1 \
    || fail "predict failed: $(cat pred.txt)"
  [[ $(grep -c "class" pred.txt) -eq 5 ]] || fail "expected 5 predictions: $(cat pred.txt)"
  ;;
sigterm_checkpoint)
  "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.run_dir=run --set train.max_steps=100000 >log 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q "step " log 2>/dev/null && break; sleep 0.1; done
  sleep 1; kill -TERM $pid; wait $pid; rc=$?
  [[ $rc -eq 0 ]] || fail "SIGTERM exit code $rc"
  grep -q "stopped by signal" log || fail "no stop message: $(tail -3 log)"
  ls run/checkpoints/*.json >/dev/null 2>&1 || fail "no checkpoint written on SIGTERM"
  ;;
mpi_train_np2)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
    --set train.max_steps=20 --set train.run_dir=run --set data.workers=1 >log 2>&1 || fail "mpirun failed: $(tail -5 log)"
  grep -q "2 rank(s)" log || fail "not 2 ranks: $(head -3 log)"
  grep -q "weights identical on all 2 ranks" log || fail "no replica check"
  [[ $(ls run/checkpoints/*.safetensors | wc -l) -ge 1 ]] || fail "rank 0 wrote no checkpoint"
  ;;
mpi_lenet5_np4_identical)
  "$mpirun" --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lenet5.toml" \
    --set train.max_steps=15 --set train.run_dir=run --set data.workers=1 --set data.batch_size=32 >log 2>&1 \
    || fail "mpirun failed: $(tail -5 log)"
  grep -q "weights identical on all 4 ranks" log || fail "replicas differ: $(tail -5 log)"
  ;;
mpi_failing_rank_aborts)
  # Rank 1 reads a dataset path that does not exist; the job must end, not hang.
  timeout 120 "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 bash -c \
    'if [[ $OMPI_COMM_WORLD_RANK == 1 ]]; then extra="--set data.path=/nonexistent/fashion-mnist"; fi; exec "$0" train "$1" --set train.run_dir=run $extra' \
    "$hpdl" "$ex/fashion_mnist/mlp.toml" >log 2>&1
  rc=$?
  [[ $rc -ne 124 ]] || fail "the job hung"
  [[ $rc -ne 0 ]] || fail "the job succeeded"
  grep -q "rank 1.*nonexistent" log || fail "the failing rank's message is missing: $(tail -5 log)"
  ;;
elastic_resume_np2_to_np1)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
    --set train.max_steps=10 --set train.run_dir=run --set data.workers=1 >log 2>&1 || fail "np2 run failed: $(tail -5 log)"
  "$hpdl" train --resume run --set train.max_steps=15 "${small[@]}" >resume.log 2>&1 || fail "np1 resume failed: $(tail -3 resume.log)"
  grep -q "resumed from" resume.log || fail "no resume"
  grep -q '"steps": 15' run/summary.json || fail "did not continue to step 15"
  ;;
activation_checkpointing_same_metrics)
  # train.activation_checkpointing recomputes each residual block / encoder layer in backward: the
  # same losses, accuracies and learning rates, step for step, bit for bit (timings stripped).
  strip() { sed -E 's/"(data_wait_s|samples_per_s|seconds)":[^,}]*,?//g' "$1"; }
  for model in resnet20 vit; do
    for ck in false true; do
      "$hpdl" train "$ex/fashion_mnist/$model.toml" "${small[@]}" --set train.log_every=1 --set train.max_steps=6 \
        --set data.batch_size=16 --set train.activation_checkpointing=$ck --set train.run_dir=${model}_$ck \
        >${model}_$ck.log 2>&1 || fail "$model activation_checkpointing=$ck failed: $(tail -3 ${model}_$ck.log)"
    done
    grep -q "activation checkpointing: .* segments" ${model}_true.log || fail "$model: no segments logged"
    # Step and epoch records only: the summary's memory figures are meant to differ.
    strip ${model}_false/metrics.jsonl | grep -v '"type":"summary"' >plain
    strip ${model}_true/metrics.jsonl | grep -v '"type":"summary"' >ckpt
    [[ $(grep -c '"type":"step"' plain) == 6 ]] && cmp -s plain ckpt || fail "$model metrics differ: $(diff plain ckpt | head -4)"
  done
  if "$hpdl" train "$ex/fashion_mnist/lstm.toml" --set train.activation_checkpointing=true >lstm.log 2>&1; then
    fail "activation checkpointing of an lstm was accepted"
  fi
  grep -q "train.activation_checkpointing = true cannot be combined with model.name = \"lstm\"" lstm.log \
    || fail "unclear error: $(tail -3 lstm.log)"
  ;;
metrics_independent_of_log_every)
  # Loss and accuracy stay on the device between log steps (read every train.log_every steps, and
  # at the epoch's end). What is logged must not depend on how often: the epoch's sums, the step
  # records both runs share, and the final loss of a run whose last step did not log (20 % 7 != 0).
  for le in 1 7; do
    for n in full capped; do
      extra=(); [[ $n == capped ]] && extra=(--set train.max_steps=20)
      "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/mlp.toml" \
        --set 'model.hidden=[32]' --set train.epochs=1 --set train.threads=1 --set data.workers=1 --set train.seed=7 \
        --set train.log_every=$le --set train.run_dir=${n}_$le "${extra[@]}" >${n}_$le.log 2>&1 \
        || fail "run $n log_every=$le failed: $(tail -3 ${n}_$le.log)"
    done
  done
  strip() { sed -E 's/"(data_wait_s|samples_per_s|seconds)":[^,}]*,?//g' "$1"; }
  strip full_1/metrics.jsonl | grep '"type":"epoch"' >e1; strip full_7/metrics.jsonl | grep '"type":"epoch"' >e7
  [[ -s e1 ]] && cmp -s e1 e7 || fail "epoch records differ: $(cat e1) vs $(cat e7)"
  grep -q '"train_loss"' e1 || fail "no train_loss in the epoch record"
  strip full_1/metrics.jsonl | grep -E '"step":(1|7|14|21|231),' >s1; strip full_7/metrics.jsonl | grep -E '"step":(1|7|14|21|231),' >s7
  [[ $(wc -l <s1) == 5 ]] && cmp -s s1 s7 || fail "step records differ: $(diff s1 s7 | head -4)"
  a=$(grep final_train_loss capped_1/summary.json); b=$(grep final_train_loss capped_7/summary.json)
  [[ -n $a && $a == "$b" ]] || fail "final train loss of a run ending on an unlogged step: $a vs $b"
  [[ $(grep -c '"type":"step"' capped_7/metrics.jsonl) == 3 ]] || fail "expected step records 1, 7 and 14 only"
  ;;
report_html)
  # One real epoch (small MLP, 5,000 validation images, traced): the run directory gets report.html with
  # the four plots, the time bar, the checkpoints and the config; `hpdl report` redraws it byte for byte.
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" --set 'model.hidden=[32]' --set train.epochs=1 --set train.threads=1 \
    --set data.workers=1 --set train.seed=7 --set train.log_every=50 --set data.validation=5000 --set train.trace=true \
    --set train.run_dir=run >log 2>&1 || fail "train failed: $(tail -3 log)"
  h=run/report.html
  [[ -s $h ]] || fail "the run wrote no report.html: $(tail -3 log)"
  [[ $(grep -c '<svg xmlns="http://www.w3.org/2000/svg" class="plot"' $h) == 4 ]] || fail "expected 4 plots in $h"
  for want in 'loss vs step' 'accuracy vs epoch' 'learning rate vs step' 'samples/s vs step' \
              'data-series="train"' 'data-series="validation"' 'data-series="lr"' 'data-phase="forward"' \
              'data-phase="backward"' 'data-phase="optimizer"' 'step-0000000430.safetensors' \
              '<th>model.name</th><td>mlp</td>' '<th>test_accuracy</th>'; do
    grep -qF "$want" $h || fail "report.html lacks: $want"
  done
  ! grep -q '<script' $h || fail "report.html has a script"
  "$hpdl" report run --output again.html >out 2>err || fail "hpdl report failed: $(cat err)"
  grep -q "wrote again.html" out || fail "hpdl report did not say what it wrote: $(cat out)"
  cmp -s $h again.html || fail "hpdl report does not reproduce the run's report.html"
  # A malformed line in the middle of metrics.jsonl: the error names the file and the line.
  n=$(( $(wc -l <run/metrics.jsonl) + 1 ))
  echo '{"type":"step","step":' >>run/metrics.jsonl
  echo '{"type":"step","step":999,"loss":1}' >>run/metrics.jsonl
  "$hpdl" report run >out 2>err && fail "a malformed metrics line was accepted"
  grep -q "run/metrics.jsonl:$n:" err || fail "the error does not name metrics.jsonl:$n: $(cat err)"
  [[ $(wc -l <err) -le 2 ]] || fail "error is not one clear line: $(cat err)"
  "$hpdl" report nowhere >out 2>err && fail "a missing run directory was accepted"
  grep -q "nowhere" err || fail "the error does not name the directory: $(cat err)"
  # A report that cannot be written (report.html is a directory) warns; the training run still succeeds.
  mkdir -p blocked/report.html
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" --set 'model.hidden=[32]' --set train.threads=1 --set data.workers=1 \
    --set train.max_steps=5 --set train.run_dir=blocked >blocked.log 2>&1 || fail "a failed report failed the run: $(tail -3 blocked.log)"
  grep -q "warning: could not write blocked/report.html" blocked.log || fail "no warning about the report: $(tail -3 blocked.log)"
  [[ -s blocked/summary.json ]] || fail "the blocked run wrote no summary"
  ;;
explain_heatmaps)
  "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=150 --set train.run_dir=run >log 2>&1 \
    || fail "train failed: $(tail -3 log)"
  t10k=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
  "$hpdl" explain --checkpoint run --first 5 --limit 3 --out ex "$t10k" >out.txt 2>err.txt || fail "explain failed: $(cat err.txt)"
  for i in 5 6 7; do
    for m in saliency ig gradcam occlusion; do
      f=ex/t10k-images-idx3-ubyte-$i-$m.png
      [[ -s $f ]] || fail "missing $f: $(ls ex)"
      # PNG IHDR: width and height, big-endian, at bytes 16-23: 2 x 28 x 8 wide, 28 x 8 high.
      [[ $(od -An -tu1 -j16 -N8 "$f" | tr -s ' ') == " 0 0 1 192 0 0 0 224" ]] || fail "$f is not 448x224"
    done
  done
  for m in saliency ig gradcam occlusion; do
    head -c 128 ex/t10k-images-idx3-ubyte-$m.npy | grep -aq "'shape': (3, 28, 28)" || fail "ex/...-$m.npy is not [3, 28, 28]"
  done
  [[ $(grep -c "target" out.txt) -eq 3 ]] || fail "expected 3 explained samples: $(cat out.txt)"
  # Integrated gradients add up to the score difference (completeness), within 5%.
  awk -F'\t' '{ split($6, s, "="); split($7, g, "="); d = s[2] - g[2]; if (d < 0) d = -d; a = g[2] < 0 ? -g[2] : g[2];
                 if (d > 0.05 * a + 1e-3) { print "sample " $2 ": " $6 " vs " $7; bad = 1 } } END { exit bad }' out.txt \
    || fail "integrated gradients are not complete: $(cat out.txt)"
  # The explained class is the class predict gives.
  "$hpdl" predict --checkpoint run --limit 8 "$t10k" >pred.txt 2>&1 || fail "predict failed: $(cat pred.txt)"
  for i in 5 6 7; do
    want=$(awk -F'\t' -v i=$i '$2 == i { print $3 }' pred.txt); got=$(awk -F'\t' -v i=$i '$2 == i { print $3 }' out.txt)
    [[ -n $want && $want == "$got" ]] || fail "sample $i: explain says '$got', predict says '$want'"
    grep -q "	$i	$want	p=[0-9.]*	target ${want#class }" out.txt || fail "sample $i: the predicted class was not the one explained"
  done
  "$hpdl" explain --checkpoint run --limit 1 --method gradcam --target 3 --out ex2 "$t10k" >out2.txt 2>&1 || fail "explain --target failed: $(cat out2.txt)"
  grep -q "target 3" out2.txt || fail "--target 3 was not explained: $(cat out2.txt)"
  [[ $(ls ex2/*.png | wc -l) -eq 1 ]] || fail "--method gradcam --limit 1 should write one PNG: $(ls ex2)"
  # --time prints one time line per method; its warm-up call changes neither the maps nor the per-sample lines.
  "$hpdl" explain --checkpoint run --first 5 --limit 3 --time --out ex5 "$t10k" >out5.txt 2>&1 || fail "explain --time failed: $(cat out5.txt)"
  for m in saliency ig gradcam occlusion; do
    [[ $(grep -c "^explain time: $m 3 samples [0-9.]* s [0-9.]* ms/sample$" out5.txt) -eq 1 ]] \
      || fail "no time line for $m: $(cat out5.txt)"
    cmp -s ex/t10k-images-idx3-ubyte-$m.npy ex5/t10k-images-idx3-ubyte-$m.npy || fail "--time changed the $m maps"
  done
  diff <(grep target out.txt) <(grep target out5.txt) >/dev/null || fail "--time changed the output: $(cat out5.txt)"
  grep -q "explain time" out.txt && fail "a time line without --time: $(cat out.txt)"
  # Deletion curves: integrated gradients and occlusion rank the pixels the model uses far better than chance.
  "$hpdl" explain --checkpoint run --limit 20 --method ig,occlusion --deletion 5 --out ex4 "$t10k" >out4.txt 2>&1 \
    || fail "explain --deletion failed: $(cat out4.txt)"
  line=$(grep "deletion area over 20 samples" out4.txt) || fail "no deletion line: $(cat out4.txt)"
  awk -v l="$line" 'BEGIN { n = split(l, f, /[ ,]+/); for (i = 1; i < n; ++i) a[f[i]] = f[i + 1];
                            exit !(a["ig"] + 0.1 < a["random"] && a["occlusion"] + 0.1 < a["random"]) }' \
    || fail "the maps rank pixels no better than chance: $line"
  # Under mpirun the samples are shared out (3 ranks, 4 samples: one rank explains one); the output is the same.
  "$mpirun" --oversubscribe --bind-to none -np 3 -x OMP_NUM_THREADS=1 "$hpdl" explain --checkpoint run --first 5 --limit 4 \
    --deletion 4 --out exmpi "$t10k" >mpi.txt 2>&1 || fail "explain under mpirun failed: $(tail -5 mpi.txt)"
  "$hpdl" explain --checkpoint run --first 5 --limit 4 --deletion 4 --out exone "$t10k" >one.txt 2>&1 || fail "explain failed"
  [[ $(ls exmpi/*.png | wc -l) -eq 16 ]] || fail "expected 16 PNGs from 3 ranks: $(ls exmpi)"
  head -c 128 exmpi/t10k-images-idx3-ubyte-ig.npy | grep -aq "'shape': (4, 28, 28)" || fail "the gathered .npy is not [4, 28, 28]"
  diff <(grep target mpi.txt | cut -f1-5) <(grep target one.txt | cut -f1-5) >/dev/null \
    || fail "3 ranks explain differently: $(cat mpi.txt) vs $(cat one.txt)"
  [[ $(grep -c "deletion area over 4 samples" mpi.txt) -eq 1 ]] || fail "expected one deletion line from rank 0: $(cat mpi.txt)"
  "$hpdl" explain --checkpoint run --method bogus --out ex3 "$t10k" >out3 2>err3 && fail "an unknown method was accepted"
  grep -q "unknown method 'bogus'" err3 || fail "the error does not name the method: $(cat err3)"
  "$hpdl" explain --checkpoint run --method gradcam --layer 9 --out ex3 "$t10k" >out3 2>err3 && fail "a flat layer was accepted for Grad-CAM"
  grep -q "layer '9' (Linear)" err3 || fail "the error does not name the layer: $(cat err3)"
  ;;
tune_pbt_np2)
  # Population-based training over 2 ranks: 4 members, 3 generations of 20 steps; after each of the
  # first two the worst member takes over the best's checkpoint with a perturbed lr.
  cat >search.toml <<EOS
config = "$ex/fashion_mnist/mlp.toml"
method = "pbt"
trials = 4
seed = 5
resource = "steps"
interval = 20
max_resource = 60
quantile = 0.25
run_dir = "pbt"
set = ["data.validation=5000", "train.threads=1", "data.workers=1", "train.log_every=10"]
[space]
"optimizer.lr" = { log_uniform = [0.001, 0.5] }
EOS
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" tune search.toml >out.txt 2>err.txt \
    || fail "tune failed: $(tail -5 err.txt)"
  grep -q "pbt search, 4 trials (4 x 20 steps, 4 x 40 steps, 4 x 60 steps), 2 rank(s)" out.txt || fail "no plan line: $(head -3 out.txt)"
  [[ $(wc -l <pbt/results.jsonl) -eq 12 ]] || fail "expected 12 results: $(cat pbt/results.jsonl)"
  [[ $(grep -c '"parent"' pbt/results.jsonl) -eq 2 ]] || fail "expected one takeover in each of generations 1 and 2: $(cat pbt/results.jsonl)"
  # The member that took over in generation 1 resumed from the copied step-20 checkpoint, with its new lr.
  rec=$(grep '"rung":1' pbt/results.jsonl | grep '"parent"')
  t=$(sed -n 's/.*"trial":\([0-9]*\).*/\1/p' <<<"$rec"); p=$(sed -n 's/.*"parent":\([0-9]*\).*/\1/p' <<<"$rec")
  dir=$(printf 'pbt/trial-%03d' "$t")
  grep -q "took over trial $p's checkpoint step-0000000020.json" "$dir/train.log" || fail "no takeover in $dir/train.log: $(cat $dir/train.log)"
  grep -q "resumed from .*$dir/checkpoints/step-0000000020" "$dir/train.log" || fail "$dir did not resume from the copy: $(cat $dir/train.log)"
  lr=$(sed -n 's/.*"optimizer.lr=\([0-9.e-]*\)".*/\1/p' <<<"$rec")
  cfg_lr=$(sed -n 's/^lr = //p' "$dir/config.toml")
  awk -v a="$lr" -v b="$cfg_lr" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-6 * a) }' \
    || fail "$dir did not train with its perturbed lr $lr (config.toml: $cfg_lr)"
  grep -q "^best: trial" out.txt || fail "no best line: $(tail -3 out.txt)"
  [[ -s pbt/best.toml ]] || fail "no best.toml"
  ;;
train_csv_features)
  # Tabular data: a CSV of feature rows (two well-separated classes in 4-D) trains an mlp to high accuracy.
  awk 'BEGIN { srand(3); print "f0,f1,f2,f3,label";
               for (i = 0; i < 600; ++i) { c = i % 2; s = c ? 1 : -1;
                 printf "%.4f,%.4f,%.4f,%.4f,%d\n", s + 0.5 * (rand() - 0.5), -s + 0.5 * (rand() - 0.5), rand(), rand(), c } }' >train.csv
  head -201 train.csv >test.csv
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${small[@]}" --set data.dataset=csv --set data.path=. --set data.normalize=false \
    --set model.num_classes=2 --set model.hidden=[16] --set train.epochs=3 --set data.batch_size=32 --set train.run_dir=run \
    >out.txt 2>err.txt || fail "training on CSV features failed: $(tail -3 err.txt)"
  acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' err.txt out.txt | tail -1)
  awk -v a="$acc" 'BEGIN { exit !(a >= 95) }' || fail "test accuracy $acc% on separable CSV features"
  ;;
stop_after_epoch_chunks)
  # A run cut into three chunks with train.stop_after_epoch (one per batch job)
  # ends bitwise where the straight run ends: the lr schedule spans all of
  # train.epochs in every chunk, and each chunk resumes from the last one's checkpoint.
  args=("$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.epochs=3 --set data.validation=59000
        --set train.eval_every_epochs=0)
  "$hpdl" train "${args[@]}" --set train.run_dir=straight >straight.log 2>&1 || fail "straight run failed: $(tail -3 straight.log)"
  "$hpdl" train "${args[@]}" --set train.run_dir=chunked --set train.stop_after_epoch=1 >c1.log 2>&1 \
    || fail "chunk 1 failed: $(tail -3 c1.log)"
  grep -q "stopped after epoch 1" c1.log || fail "chunk 1 did not say where it stopped: $(tail -3 c1.log)"
  [[ $(ls chunked/checkpoints/*.json | wc -l) -eq 1 ]] || fail "chunk 1 should leave one checkpoint: $(ls chunked/checkpoints)"
  "$hpdl" train --resume chunked --set train.stop_after_epoch=2 >c2.log 2>&1 || fail "chunk 2 failed: $(tail -3 c2.log)"
  "$hpdl" train --resume chunked --set train.stop_after_epoch=1 >c3.log 2>&1 && fail "resuming past stop_after_epoch was accepted"
  grep -q "already past epoch 2" c3.log || fail "no clear error for a stop before the checkpoint: $(tail -3 c3.log)"
  "$hpdl" train --resume chunked --set train.stop_after_epoch=0 >c4.log 2>&1 || fail "last chunk failed: $(tail -3 c4.log)"
  last=$(ls straight/checkpoints/*.safetensors | tail -1)
  cmp "$last" "chunked/checkpoints/$(basename "$last")" || fail "the chunked run's final weights differ from the straight run's"
  ;;
tune_sha_np2)
  # Successive halving over 2 ranks: 4 trials x 20 steps, 2 x 40, 1 x 60, selected on 5,000 held-out images.
  steps_search sha tune >search.toml
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" tune search.toml >out.txt 2>err.txt \
    || fail "tune failed: $(tail -5 err.txt)"
  grep -q "sha search, 4 trials (4 x 20 steps, 2 x 40 steps, 1 x 60 steps), 2 rank(s)" out.txt || fail "no plan line: $(head -3 out.txt)"
  [[ $(wc -l <tune/results.jsonl) -eq 7 ]] || fail "expected 7 results: $(cat tune/results.jsonl)"
  [[ $(grep -c '"rung":2' tune/results.jsonl) -eq 1 ]] || fail "the last rung should hold one trial"
  ! grep '"rung":0' tune/results.jsonl | grep -q test_accuracy || fail "the test set was read before the full budget"
  grep '"rung":2' tune/results.jsonl | grep -q test_accuracy || fail "no test accuracy at the full budget"
  best=$(sed -n 's/^best: trial \([0-9]*\) .*/\1/p' out.txt)
  [[ -n $best ]] || fail "no best line: $(cat out.txt)"
  grep -q "^rung 2 (60 steps) trial $best " out.txt || fail "the best trial is not the one of the last rung"
  # Promoted trials resumed from their checkpoints; every trial held out 5,000 images.
  grep -q "resumed from .*step-0000000040" "tune/trial-$best/train.log" || fail "trial $best did not resume: $(cat tune/trial-$best/train.log)"
  grep -q "55000 samples" tune/trial-000/train.log || fail "data.validation did not hold out 5,000 images"
  lr=$(grep '^lr = ' "tune/trial-$best/config.toml") || fail "no lr in the trial's config"
  grep -qx "$lr" tune/best.toml || fail "best.toml is not the best trial's config ($lr)"
  ! grep -q "run_dir = \"tune/trial" tune/best.toml || fail "best.toml keeps the trial's run_dir"
  acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' out.txt)
  awk -v a="$acc" 'BEGIN { exit !(a > 60) }' || fail "best test accuracy $acc% after 60 steps is too low"
  "$hpdl" tune search.toml >again.txt 2>&1 && fail "a second search into the same run_dir was accepted"
  grep -q "already holds a search" again.txt || fail "no clear refusal: $(cat again.txt)"
  sed -i 's/trials = 4/trails = 4/' search.toml
  "$hpdl" tune search.toml --set run_dir=tune2 >bad.txt 2>&1 && fail "a misspelt key was accepted"
  grep -q "unknown key 'trails' (did you mean 'trials'?)" bad.txt || fail "the error does not name the key: $(cat bad.txt)"
  ;;
tune_asha_np2)
  # Asynchronous successive halving over 2 groups of 1 rank: 4 trials started at 20 steps,
  # promoted (eta 2) to 40 and 60 steps as soon as they are in the top half of their rung so far.
  steps_search asha asha >search.toml
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" tune search.toml >out.txt 2>err.txt \
    || fail "tune failed: $(tail -5 err.txt)"
  grep -q "asha search, 4 trials (rungs at 20, 40, 60 steps), 2 rank(s) in groups of 1" out.txt || fail "no plan line: $(head -3 out.txt)"
  r=asha/results.jsonl
  [[ $(grep -c '"rung":0' $r) -eq 4 ]] || fail "expected every trial once at rung 0: $(cat $r)"
  [[ $(grep -c '"rung":2' $r) -ge 1 ]] || fail "no trial reached the full budget: $(cat $r)"
  [[ $(grep -c '"group":' $r) -eq $(wc -l <$r) ]] || fail "a record does not name its group: $(cat $r)"
  grep -q '"group":0' $r && grep -q '"group":1' $r || fail "both groups should have trained: $(cat $r)"
  ! grep -v '"rung":2' $r | grep -q test_accuracy || fail "the test set was read before the full budget"
  best=$(sed -n 's/^best: trial \([0-9]*\) .*/\1/p' out.txt)
  [[ -n $best ]] || fail "no best line: $(cat out.txt)"
  grep -q "^rung 2 (60 steps) trial $best " out.txt || fail "the best trial did not reach the last rung: $(cat out.txt)"
  # Each rung-2 trial was promoted through rung 1 and resumed from its step-40 checkpoint.
  for t in $(grep '"rung":2' $r | sed -n 's/.*"trial":\([0-9]*\).*/\1/p'); do
    grep -q "\"rung\":1,.*\"trial\":$t[,}]" $r || fail "trial $t skipped rung 1: $(cat $r)"
    d=$(printf 'asha/trial-%03d' "$t")
    grep -q "resumed from .*step-0000000040" "$d/train.log" || fail "$d did not resume: $(cat $d/train.log)"
  done
  lr=$(grep '^lr = ' "asha/trial-$best/config.toml") || fail "no lr in the trial's config"
  grep -qx "$lr" asha/best.toml || fail "best.toml is not the best trial's config ($lr)"
  acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' out.txt)
  awk -v a="$acc" 'BEGIN { exit !(a > 60) }' || fail "best test accuracy $acc% after 60 steps is too low"
  ;;
info)
  "$hpdl" info >out.txt 2>&1 || fail "hpdl info failed: $(cat out.txt)"
  for want in "^hpdl " "^oneDNN .*, ISA " "^OpenMP threads [1-9]" "^MPI " "^ranks 1 \(not under mpirun\)" \
      "^HDF5 [0-9]+\.[0-9]+\.[0-9]+ " "^CUDA backend: "; do
    grep -Eq "$want" out.txt || fail "hpdl info has no line matching '$want': $(cat out.txt)"
  done
  # Built with CUDA: the library versions, then the GPUs or that none is visible.
  if grep -q "^CUDA backend: built in" out.txt; then
    grep -Eq "^CUDA runtime [0-9]+\.[0-9]+, driver .*, cuDNN [0-9]+\.[0-9]+\.[0-9]+, NCCL [0-9]" out.txt \
      || fail "no CUDA version line: $(cat out.txt)"
    grep -Eq "^(cuda:0: .*compute capability|no GPU visible)" out.txt || fail "no GPU line: $(cat out.txt)"
  fi
  ;;
trace_overlap)
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lenet5.toml" \
    --set train.max_steps=5 --set train.run_dir=run --set train.trace=true --set data.workers=1 >log 2>&1 || fail "run failed"
  [[ -s run/trace.json ]] || fail "no trace.json"
  for span in forward backward optimizer data_wait "allreduce bucket"; do
    grep -q "\"$span" run/trace.json || fail "trace lacks $span spans"
  done
  grep -q '"pid":1' run/trace.json || fail "trace lacks rank 1"
  ;;
train_from_store)
  # The same run from a packed store and from the idx files must see the same samples.
  fm=/usr/share/datasets/fashion-mnist
  "$hpdl" pack $fm/train-images-idx3-ubyte.gz -o fm.store >/dev/null || fail "pack train failed"
  "$hpdl" pack $fm/t10k-images-idx3-ubyte.gz -o fm.store --append >/dev/null || fail "pack test failed"
  a=("$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=30)
  "$hpdl" train "${a[@]}" --set train.run_dir=idx >idx.log 2>&1 || fail "idx run failed"
  "$hpdl" train "${a[@]}" --set train.run_dir=store --set data.store=fm.store >store.log 2>&1 \
    || fail "store run failed: $(tail -3 store.log)"
  cmp idx/checkpoints/step-0000000030.safetensors store/checkpoints/step-0000000030.safetensors \
    || fail "training from the store gave different weights than from the idx files"
  ;;
train_custom_model)
  # A model given as [[model.layers]] trains, and a bad layer list is a clear error.
  "$hpdl" train "$ex/fashion_mnist/custom_cnn.toml" "${small[@]}" --set train.max_steps=40 --set train.run_dir=run \
    >log 2>&1 || fail "custom model run failed: $(tail -3 log)"
  grep -q "training custom" log || fail "not the custom model: $(head -2 log)"
  "$hpdl" eval --checkpoint run >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  printf '[model]\nname = "custom"\n[[model.layers]]\ntype = "linear"\nout_features = 7\n' >bad.toml
  "$hpdl" train bad.toml --set train.max_steps=1 >out 2>err && fail "a last layer of 7 outputs for 10 classes was accepted"
  grep -q "num_classes" err || fail "error does not explain the class count: $(cat err)"
  ;;
lstm_np2_resume)
  # The zoo's LSTM (a recurrent layer, parameters registered like any layer's) trains data
  # parallel with identical replicas, resumes from its checkpoint on one rank, and evaluates.
  "$mpirun" --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 "$hpdl" train "$ex/fashion_mnist/lstm.toml" \
    --set 'model.hidden=[32]' --set data.workers=1 --set data.batch_size=32 --set train.seed=7 --set train.log_every=5 \
    --set train.checkpoint_every_steps=5 --set train.max_steps=10 --set train.run_dir=run >log 2>&1 \
    || fail "mpirun failed: $(tail -5 log)"
  grep -q "training lstm" log || fail "not the lstm model: $(head -2 log)"
  grep -q "weights identical on all 2 ranks" log || fail "replicas differ: $(tail -5 log)"
  "$hpdl" train --resume run --set train.max_steps=15 --set train.threads=1 >resume.log 2>&1 \
    || fail "resume failed: $(tail -3 resume.log)"
  grep -q "resumed from" resume.log || fail "resume did not report its checkpoint"
  ls run/checkpoints/step-0000000015.safetensors >/dev/null || fail "no checkpoint after the resumed steps"
  "$hpdl" eval --checkpoint run >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  grep -q "test accuracy" eval.txt || fail "eval printed no accuracy: $(cat eval.txt)"
  ;;
export_onnx)
  # hpdl export: the ONNX graph of a trained run, fed the raw pixels `hpdl predict` reads,
  # must give predict's classes and probabilities (normalization inside the graph).
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.max_steps=30 --set train.run_dir=run >log 2>&1 \
    || fail "train failed: $(tail -3 log)"
  "$hpdl" export --checkpoint run --output model.onnx >export.txt 2>&1 || fail "export failed: $(cat export.txt)"
  grep -q "wrote model.onnx" export.txt || fail "export did not report the file: $(cat export.txt)"
  t10k=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
  "$hpdl" predict --checkpoint run --limit 16 "$t10k" >pred.txt 2>&1 || fail "predict failed: $(cat pred.txt)"
  "${PYTHON:-/usr/bin/python3}" "$(dirname "$ex")/tests/integration/onnx_check.py" predict model.onnx "$t10k" pred.txt >check.txt 2>&1 \
    || fail "the ONNX graph disagrees with hpdl predict: $(tail -5 check.txt)"
  grep -q "16 predictions match" check.txt || fail "nothing compared: $(cat check.txt)"
  # The same for a tiny ViT (2 heads, one block): attention, LayerNorm and the class token in ONNX.
  "$hpdl" train "$ex/fashion_mnist/vit.toml" "${small[@]}" --set model.dim=8 --set model.depth=1 --set model.heads=2 \
    --set model.patch_size=7 --set train.max_steps=5 --set train.run_dir=vitrun >vitlog 2>&1 \
    || fail "vit train failed: $(tail -3 vitlog)"
  "$hpdl" export --checkpoint vitrun --output vit.onnx >vitexport.txt 2>&1 || fail "vit export failed: $(cat vitexport.txt)"
  "$hpdl" predict --checkpoint vitrun --limit 16 "$t10k" >vitpred.txt 2>&1 || fail "vit predict failed: $(cat vitpred.txt)"
  "${PYTHON:-/usr/bin/python3}" "$(dirname "$ex")/tests/integration/onnx_check.py" predict vit.onnx "$t10k" vitpred.txt \
    >vitcheck.txt 2>&1 || fail "the ViT's ONNX graph disagrees with hpdl predict: $(tail -5 vitcheck.txt)"
  grep -q "16 predictions match" vitcheck.txt || fail "nothing compared for the ViT: $(cat vitcheck.txt)"
  "$hpdl" export --checkpoint run --output missing/dir/model.onnx >out 2>err && fail "export into a missing directory succeeded"
  grep -q "missing/dir/model.onnx" err || fail "the error does not name the file: $(cat err)"
  [[ $(wc -l <err) -le 2 ]] || fail "error is not one clear line: $(cat err)"
  ;;
hdf5_predict_explain_pack)
  # An HDF5 file (made here with h5py): train on it, then predict, explain and pack from it.
  # Four classes of 8x8 images, class k with quadrant k bright; train [N, 1, 8, 8] uint8 with int32
  # labels, test [N, 8, 8] uint8 with int64 labels, the test images again as float64 in [0, 1].
  "${PYTHON:-python3}" - <<'PY' || fail "could not write d.h5 (Debian: python3-h5py, python3-numpy)"
import h5py
import numpy as np
rng = np.random.default_rng(5)
def quadrants(n):
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, 8, 8))
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
    return x.astype(np.uint8), y
xtr, ytr = quadrants(512)
xte, yte = quadrants(64)
with h5py.File("d.h5", "w") as f:
    f["train/images"] = xtr[:, None]
    f["train/labels"] = ytr.astype(np.int32)
    f["test/images"] = xte
    f["test/labels"] = yte.astype(np.int64)
    f["extra/float"] = (xte / 255.0)[:, None]
    f["extra/wrong"] = np.zeros((4, 7, 7), np.uint8)
np.save("test.npy", xte[:, None])
np.savetxt("labels.txt", yte, fmt="%d")
PY
  h5=(--set data.dataset=hdf5 --set data.path=d.h5 --set model.num_classes=4 --set model.hidden=[32] --set data.batch_size=32)
  "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${small[@]}" "${h5[@]}" --set train.epochs=3 --set train.run_dir=run \
    >train.log 2>&1 || fail "training on d.h5 failed: $(tail -3 train.log)"
  # predict: the run's test dataset by default, the same answers as the same pixels in a .npy.
  "$hpdl" predict --checkpoint run d.h5 >h5.txt 2>err.txt || fail "predict d.h5 failed: $(cat err.txt)"
  [[ $(grep -c "	class " h5.txt) -eq 64 ]] || fail "expected 64 predictions: $(head -3 h5.txt)"
  "$hpdl" predict --checkpoint run test.npy >npy.txt 2>&1 || fail "predict test.npy failed: $(cat npy.txt)"
  diff <(cut -f2- h5.txt) <(cut -f2- npy.txt) >/dev/null || fail "d.h5 and test.npy predictions differ"
  "$hpdl" predict --checkpoint run d.h5:extra/float >float.txt 2>&1 || fail "predict d.h5:extra/float failed: $(cat float.txt)"
  diff <(cut -f2,3 float.txt) <(cut -f2,3 npy.txt) >/dev/null || fail "float64 pixels give other classes than uint8"
  correct=$(paste <(cut -f3 h5.txt | sed 's/class //') labels.txt | awk '$1 == $2' | wc -l)
  [[ $correct -ge 58 ]] || fail "only $correct of 64 test images classified right"
  # Bad datasets are named.
  "$hpdl" predict --checkpoint run d.h5:extra/absent >out.txt 2>&1 && fail "a missing dataset was accepted"
  grep -q "d.h5" out.txt && grep -q "extra/absent" out.txt && grep -q "test/images" out.txt \
    || fail "the missing-dataset error does not name the file, the dataset and what the file holds: $(cat out.txt)"
  "$hpdl" predict --checkpoint run d.h5:extra/wrong >out.txt 2>&1 && fail "7x7 samples were accepted"
  grep -q "extra/wrong' is \[4, 7, 7\]" out.txt || fail "the shape error does not name the dataset: $(cat out.txt)"
  # explain: heatmaps named after the file and the dataset.
  "$hpdl" explain --checkpoint run --limit 2 --method saliency,occlusion --window 2 --stride 2 --out ex d.h5:test/images \
    >ex.txt 2>&1 || fail "explain d.h5 failed: $(cat ex.txt)"
  for f in ex/d-test_images-0-saliency.png ex/d-test_images-1-occlusion.png; do [[ -s $f ]] || fail "missing $f: $(ls ex)"; done
  head -c 128 ex/d-test_images-saliency.npy | grep -aq "'shape': (2, 8, 8)" || fail "saliency maps are not [2, 8, 8]"
  diff <(grep target ex.txt | cut -f2,3) <(head -2 h5.txt | cut -f2,3) >/dev/null || fail "explain and predict disagree: $(cat ex.txt)"
  # pack: both splits into a store, which trains to the same weights as the file.
  "$hpdl" pack d.h5 -o st >pack.log 2>&1 || fail "pack d.h5 failed: $(cat pack.log)"
  grep -q "578 files" pack.log || fail "expected 512 + 64 samples and 2 meta.json: $(cat pack.log)"
  a=("$ex/fashion_mnist/mlp.toml" "${small[@]}" "${h5[@]}" --set train.max_steps=20)
  "$hpdl" train "${a[@]}" --set train.run_dir=file >file.log 2>&1 || fail "run from d.h5 failed: $(tail -3 file.log)"
  "$hpdl" train "${a[@]}" --set train.run_dir=store --set data.store=st >store.log 2>&1 \
    || fail "run from the store failed: $(tail -3 store.log)"
  cmp file/checkpoints/step-0000000020.safetensors store/checkpoints/step-0000000020.safetensors \
    || fail "training from the packed store gave different weights than from d.h5"
  "$hpdl" pack d.h5 -o st2 --hdf5-x nope --hdf5-test-x nope2 >out.txt 2>&1 && fail "pack without samples succeeded"
  grep -q "neither 'nope' nor 'nope2'" out.txt || fail "pack does not name the missing datasets: $(cat out.txt)"
  ;;
jobs_slurm_chain)
  # slurm_train.sbatch trains a 3-epoch run one epoch per job (HPDL_EPOCHS_PER_JOB=1) under
  # mpirun -np 2, each job staging a packed store to a "node-local" folder first.
  fake_batch_system
  fm=/usr/share/datasets/fashion-mnist
  "$hpdl" pack $fm/train-images-idx3-ubyte.gz -o fm.store >/dev/null || fail "pack train failed"
  "$hpdl" pack $fm/t10k-images-idx3-ubyte.gz -o fm.store --append >/dev/null || fail "pack test failed"
  sets="train.epochs=3 data.validation=59000 train.eval_every_epochs=0 train.threads=1 data.workers=1 train.seed=7"
  launch="$mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1"
  read -r -a launch_words <<<"$launch"
  straight=()
  for kv in $sets; do straight+=(--set "$kv"); done
  "${launch_words[@]}" "$hpdl" train "$ex/fashion_mnist/mlp.toml" "${straight[@]}" --set train.run_dir=straight >straight.log 2>&1 \
    || fail "straight run failed: $(tail -3 straight.log)"
  export SLURM_JOB_ID=4242 SLURM_TMPDIR=$PWD/nodelocal HPDL_RUN_DIR=$PWD/run HPDL_CONFIG=$ex/fashion_mnist/mlp.toml \
    HPDL_EPOCHS_PER_JOB=1 HPDL_STORE=$PWD/fm.store HPDL_LAUNCH=$launch HPDL_SET=$sets
  bash "$jobs/slurm_train.sbatch" >job1.log 2>&1 || fail "job 1 failed: $(job_log job1.log | tail -5)"
  grep -q "hpdl stage: node 0/1: .* in $PWD/nodelocal/hpdl-store-4242" job1.log || fail "job 1 did not stage the store: $(job_log job1.log)"
  grep -q "stopped after epoch 1" job1.log || fail "job 1 did not stop after epoch 1: $(job_log job1.log | tail -5)"
  grep -q "^store = '$PWD/nodelocal/hpdl-store-4242'" run/config.toml || fail "job 1 did not train from the staged store"
  [[ ! -e nodelocal/hpdl-store-4242 ]] || fail "job 1 left its staged store behind"
  [[ $(cat submits) == "sbatch --dependency=afterany:4242 --export=ALL,HPDL_JOB_COUNT=2 $jobs/slurm_train.sbatch" ]] \
    || fail "job 1 did not chain the next job: $(cat submits)"
  # A STOP file ends the chain: no training, no submission.
  touch run/STOP
  HPDL_JOB_COUNT=2 bash "$jobs/slurm_train.sbatch" >stop.log 2>&1 || fail "the STOP job failed: $(cat stop.log)"
  grep -q "STOP exists" stop.log || fail "the STOP file was not noticed: $(cat stop.log)"
  [[ $(wc -l <submits) -eq 1 ]] || fail "a job was submitted despite run/STOP: $(cat submits)"
  rm run/STOP
  # Job 2 resumes and chains by requeueing itself; job 3 ends the run; job 4 finds it complete.
  HPDL_JOB_COUNT=2 HPDL_CHAIN=requeue bash "$jobs/slurm_train.sbatch" >job2.log 2>&1 || fail "job 2 failed: $(job_log job2.log | tail -5)"
  grep -q "resumed from .*step-0000000004" job2.log || fail "job 2 did not resume from epoch 1: $(job_log job2.log | tail -5)"
  grep -q "stopped after epoch 2" job2.log || fail "job 2 did not stop after epoch 2: $(job_log job2.log | tail -5)"
  [[ $(tail -1 submits) == "scontrol requeue 4242" ]] || fail "job 2 did not requeue itself: $(cat submits)"
  HPDL_JOB_COUNT=3 bash "$jobs/slurm_train.sbatch" >job3.log 2>&1 || fail "job 3 failed: $(job_log job3.log | tail -5)"
  grep -q "resumed from .*step-0000000008" job3.log || fail "job 3 did not resume from epoch 2: $(job_log job3.log | tail -5)"
  grep -q "run $PWD/run is complete; the chain ends here" job3.log || fail "job 3 did not see the run complete: $(job_log job3.log | tail -5)"
  [[ $(wc -l <submits) -eq 2 ]] || fail "job 3 submitted another job: $(cat submits)"
  bash "$jobs/slurm_train.sbatch" >job4.log 2>&1 || fail "job 4 failed: $(cat job4.log)"
  grep -q "is complete (.*summary.json); nothing to do" job4.log || fail "job 4 did not see the run complete: $(cat job4.log)"
  ! grep -q "hpdl stage\|training mlp" job4.log || fail "job 4 staged or trained a complete run: $(cat job4.log)"
  [[ $(wc -l <submits) -eq 2 ]] || fail "job 4 submitted another job: $(cat submits)"
  cmp straight/checkpoints/step-0000000012.safetensors run/checkpoints/step-0000000012.safetensors \
    || fail "the chained run's final weights differ from the straight run's"
  ;;
jobs_slurm_sigterm)
  # SIGTERM to the job script's process group while hpdl trains: a checkpoint, a resubmission;
  # the next job resumes and completes the run without another.
  fake_batch_system
  export SLURM_JOB_ID=77 HPDL_RUN_DIR=$PWD/run HPDL_CONFIG=$ex/fashion_mnist/mlp.toml HPDL_LAUNCH= \
    HPDL_SET="train.epochs=1 train.threads=1 data.workers=1 train.checkpoint_every_epochs=0 train.log_every=10"
  set -m; bash "$jobs/slurm_train.sbatch" >job1.log 2>&1 & pid=$!; set +m
  for _ in $(seq 300); do grep -q "step " job1.log 2>/dev/null && break; sleep 0.1; done
  grep -q "step " job1.log || { kill -KILL -- -$pid; fail "training did not start: $(cat job1.log)"; }
  kill -TERM -- -$pid; wait $pid; rc=$?
  [[ $rc -eq 0 ]] || fail "the job script exited with $rc after SIGTERM: $(job_log job1.log | tail -5)"
  grep -q "SIGTERM: forwarding SIGTERM to the launcher" job1.log || fail "the script did not forward the signal: $(job_log job1.log | tail -5)"
  grep -q "stopped by signal after a checkpoint" job1.log || fail "hpdl did not stop with a checkpoint: $(job_log job1.log | tail -5)"
  grep -q '"interrupted": true' run/summary.json || fail "summary.json does not say interrupted"
  ckpt=$(ls run/checkpoints/*.json) || fail "no checkpoint after SIGTERM"
  [[ $(cat submits) == "sbatch --dependency=afterany:77 --export=ALL,HPDL_JOB_COUNT=2 $jobs/slurm_train.sbatch" ]] \
    || fail "no resubmission after SIGTERM: $(cat submits)"
  HPDL_JOB_COUNT=2 bash "$jobs/slurm_train.sbatch" >job2.log 2>&1 || fail "job 2 failed: $(job_log job2.log | tail -5)"
  grep -q "resumed from .*$(basename "$ckpt" .json)" job2.log || fail "job 2 did not resume: $(job_log job2.log | tail -5)"
  grep -q "the chain ends here" job2.log || fail "job 2 did not end the chain: $(job_log job2.log | tail -5)"
  [[ $(wc -l <submits) -eq 1 ]] || fail "job 2 resubmitted a complete run: $(cat submits)"
  ;;
jobs_pbs_timer)
  # pbs_train.sh with HPDL_STOP_AFTER (5 s, well after hpdl installs its handlers): the script's own timer signals the script alone, so hpdl
  # stops only if the script forwards the signal; then qsub chains the next job. The run (100 epochs)
  # is far longer than the three 5 s jobs together on any machine, so no job can complete it.
  fake_batch_system
  export PBS_JOBID=123.pbs HPDL_RUN_DIR=$PWD/run HPDL_CONFIG=$ex/fashion_mnist/mlp.toml HPDL_LAUNCH= HPDL_STOP_AFTER=5 \
    HPDL_SET="train.epochs=100 train.threads=1 data.workers=1 train.checkpoint_every_epochs=0"
  bash "$jobs/pbs_train.sh" >job1.log 2>&1 || fail "the PBS job failed: $(job_log job1.log | tail -5)"
  grep -q "stopped by signal after a checkpoint" job1.log || fail "hpdl did not get the forwarded signal: $(job_log job1.log | tail -5)"
  ls run/checkpoints/*.json >/dev/null 2>&1 || fail "no checkpoint"
  [[ $(cat submits) == "qsub -W depend=afterany:123.pbs -V -v HPDL_JOB_COUNT=2 $jobs/pbs_train.sh" ]] \
    || fail "no qsub of the next job: $(cat submits)"
  grep -q "SIGUSR1: forwarding SIGTERM to the launcher" job1.log || fail "the timer's signal was not forwarded: $(job_log job1.log | tail -5)"
  # Chaining ends after a signal not in HPDL_RESUBMIT_SIGNALS, and after HPDL_MAX_JOBS jobs.
  HPDL_RESUBMIT_SIGNALS=TERM HPDL_JOB_COUNT=2 bash "$jobs/pbs_train.sh" >job2.log 2>&1 || fail "job 2 failed: $(job_log job2.log | tail -5)"
  grep -q "resumed from" job2.log || fail "job 2 did not resume: $(job_log job2.log | tail -5)"
  grep -q "stopped by SIGUSR1: checkpoint at step [0-9]*, not resubmitting" job2.log || fail "job 2 went on: $(job_log job2.log | tail -3)"
  HPDL_MAX_JOBS=3 HPDL_JOB_COUNT=3 bash "$jobs/pbs_train.sh" >job3.log 2>&1 && fail "job 3 went past HPDL_MAX_JOBS"
  grep -q "HPDL_MAX_JOBS=3 jobs done and the run is not complete" job3.log || fail "no HPDL_MAX_JOBS message: $(job_log job3.log | tail -3)"
  [[ $(wc -l <submits) -eq 1 ]] || fail "jobs 2 or 3 submitted: $(cat submits)"
  # A job that ends without a new checkpoint (here: no training at all) is not resubmitted.
  HPDL_BIN=true bash "$jobs/pbs_train.sh" >noprogress.log 2>&1 && fail "a job without progress succeeded"
  grep -q "no new checkpoint in .*; not resubmitting" noprogress.log || fail "no clear message: $(cat noprogress.log)"
  # A job that fails (a bad key) is not resubmitted.
  HPDL_SET="train.epochz=3" HPDL_JOB_COUNT=2 bash "$jobs/pbs_train.sh" >bad.log 2>&1 && fail "a failing job succeeded"
  grep -q "training failed (exit status [1-9][0-9]*); not resubmitting" bad.log || fail "no clear failure: $(job_log bad.log | tail -3)"
  grep -q "train.epochz" bad.log || fail "hpdl's error is not in the job log: $(job_log bad.log | tail -3)"
  [[ $(wc -l <submits) -eq 1 ]] || fail "a failed job was resubmitted: $(cat submits)"
  unset HPDL_RUN_DIR
  bash "$jobs/pbs_train.sh" >norun.log 2>&1 && fail "a job without HPDL_RUN_DIR succeeded"
  grep -q "set HPDL_RUN_DIR" norun.log || fail "no clear error without HPDL_RUN_DIR: $(cat norun.log)"
  ;;
jobs_slurm_tune)
  # slurm_tune.sbatch: a search of 2 trials x 10 steps, then the training of its best config is submitted.
  fake_batch_system
  cat >search.toml <<EOS
config = "$ex/fashion_mnist/mlp.toml"
method = "random"
trials = 2
seed = 3
resource = "steps"
max_resource = 10
run_dir = "unused"
set = ["data.validation=1000", "train.threads=1", "data.workers=1"]
[space]
"optimizer.lr" = { log_uniform = [0.01, 0.1] }
EOS
  export SLURM_JOB_ID=99 HPDL_RUN_DIR=$PWD/tune HPDL_TUNE_CONFIG=$PWD/search.toml HPDL_LAUNCH= HPDL_TRAIN_BEST=1
  bash "$jobs/slurm_tune.sbatch" >job1.log 2>&1 || fail "the tune job failed: $(job_log job1.log | tail -5)"
  [[ -f tune/best.toml ]] || fail "no best.toml"
  [[ $(wc -l <tune/results.jsonl) -eq 2 ]] || fail "expected 2 results: $(cat tune/results.jsonl)"
  [[ $(cat submits) == "sbatch --export=ALL,HPDL_CONFIG=$PWD/tune/best.toml,HPDL_RUN_DIR=$PWD/tune/best $jobs/slurm_train.sbatch" ]] \
    || fail "the best config's training was not submitted: $(cat submits)"
  bash "$jobs/slurm_tune.sbatch" >job2.log 2>&1 || fail "the second tune job failed: $(cat job2.log)"
  grep -q "search in $PWD/tune is complete" job2.log || fail "the finished search was not noticed: $(cat job2.log)"
  [[ $(wc -l <submits) -eq 1 ]] || fail "the second tune job submitted: $(cat submits)"
  rm tune/best.toml
  bash "$jobs/slurm_tune.sbatch" >job3.log 2>&1 && fail "an unfinished search was accepted"
  grep -q "unfinished search" job3.log || fail "no clear refusal of an unfinished search: $(cat job3.log)"
  ;;
jobs_scripts_lint)
  # The job scripts parse and are shellcheck-clean (shellcheck: Debian package, scripts/setup.sh).
  for f in "$jobs"/*.sh "$jobs"/*.sbatch; do bash -n "$f" || fail "bash -n $f"; done
  command -v shellcheck >/dev/null || fail "shellcheck is not installed (scripts/setup.sh installs it)"
  (cd "$ex/.." && shellcheck -x examples/jobs/*.sh examples/jobs/*.sbatch) >lint.txt 2>&1 || fail "shellcheck: $(cat lint.txt)"
  ;;
train_regression_example)
  # The regression example: a surrogate of the damped, driven oscillator's amplitude trains to
  # R^2 > 0.95 on its test set in a short budget; eval and predict print values, not classes;
  # label smoothing and integer labels with a regression loss are refused by name.
  py=${PYTHON:-python3}
  "$py" "$ex/regression/make_oscillator.py" data --train 3000 --test 600 || fail "the generator failed"
  [[ $(wc -l <data/train.csv) -eq 3001 ]] || fail "train.csv should have a header and 3000 rows"
  "$hpdl" train "$ex/regression/oscillator.toml" "${small[@]}" --set data.path=data --set train.epochs=12 \
    --set train.run_dir=run >out.txt 2>err.txt || fail "training failed: $(tail -3 err.txt)"
  r2=$(sed -n 's/.*"test_r2": *\([-0-9.e]*\).*/\1/p' run/summary.json)
  [[ -n $r2 ]] || fail "no test_r2 in summary.json: $(cat run/summary.json)"
  awk -v r="$r2" 'BEGIN { exit !(r > 0.95) }' || fail "test R^2 $r2 of the oscillator surrogate"
  grep -q '"test_rmse"' run/summary.json || fail "no test_rmse in summary.json"
  grep -q '"test_accuracy"' run/summary.json && fail "a regression run reported accuracy"
  grep -q "test RMSE" out.txt || fail "train printed no RMSE: $(cat out.txt)"
  grep -q "train_r2" run/metrics.jsonl || fail "no train_r2 in the epoch records"
  "$hpdl" eval --checkpoint run >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  grep -q "test RMSE .* R2 " eval.txt || fail "eval printed no RMSE and R2: $(cat eval.txt)"
  # predict: two samples as a float32 .npy written by hand; far from resonance the amplitude is
  # smooth, and the surrogate must be within 0.1 of the formula there.
  "$py" - <<'PY' || fail "could not write the predict input"
import struct
rows = [(1.5, 0.5, 0.5), (1.2, 0.8, 2.0)]
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
with open("in.npy", "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    for r in rows:
        f.write(struct.pack("<3f", *r))
PY
  "$hpdl" predict --checkpoint run in.npy >pred.txt 2>&1 || fail "predict failed: $(cat pred.txt)"
  [[ $(grep -c "value" pred.txt) -eq 2 ]] || fail "expected 2 values: $(cat pred.txt)"
  grep -q "class" pred.txt && fail "predict printed classes for a regression model: $(cat pred.txt)"
  awk '{ w0 = (NR == 1 ? 1.5 : 1.2); z = (NR == 1 ? 0.5 : 0.8); w = (NR == 1 ? 0.5 : 2.0);
         a = 1 / sqrt((w0 * w0 - w * w) ^ 2 + (2 * z * w0 * w) ^ 2); d = $4 - a; if (d < 0) d = -d;
         if (d > 0.1) { print "sample " NR ": " $4 " vs " a; bad = 1 } } END { exit bad }' pred.txt \
    || fail "predictions far from the formula: $(cat pred.txt)"
  "$hpdl" train "$ex/regression/oscillator.toml" --set data.path=data --set train.label_smoothing=0.1 \
    --set train.run_dir=bad >bad.txt 2>&1 && fail "label smoothing with mse was accepted"
  grep -q "train.label_smoothing" bad.txt || fail "no clear refusal of label smoothing: $(cat bad.txt)"
  "$hpdl" train "$ex/regression/oscillator.toml" --set data.path=data --set train.loss=cross_entropy \
    --set train.run_dir=bad >bad2.txt 2>&1 && fail "float targets with cross entropy were accepted"
  grep -q "train.csv" bad2.txt || fail "the refusal does not name the file: $(cat bad2.txt)"
  ;;
regression_predict_export)
  # A regression model's tools: predict prints both outputs of every sample, and the test
  # set's RMSE, MAE, R^2 and loss recomputed from those predictions equal what eval reports;
  # export writes an ONNX graph whose output 'values' gives predict's values.
  regression_data
  "$hpdl" train reg.toml >log 2>&1 || fail "training failed: $(tail -3 log)"
  "$hpdl" eval --checkpoint run >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  grep -q "^test RMSE .* (256 samples), loss " eval.txt || fail "eval printed no regression metrics: $(cat eval.txt)"
  "$hpdl" predict --checkpoint run data/test_x.npy >pred.txt 2>&1 || fail "predict failed: $(cat pred.txt)"
  [[ $(grep -c $'\tvalue ' pred.txt) -eq 256 ]] || fail "expected 256 predictions: $(head -3 pred.txt)"
  "${PYTHON:-python3}" - <<'PY' >recomputed.txt 2>&1 || fail "predictions and eval disagree: $(cat recomputed.txt)"
import re
import numpy as np
p = np.array([[float(v) for v in line.split("\t")[2].split()[1:]] for line in open("pred.txt")])
y = np.load("data/test_y.npy").astype(np.float64)
assert p.shape == y.shape == (256, 2), (p.shape, y.shape)
e = p - y
mse, mae = float((e ** 2).mean()), float(np.abs(e).mean())
sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
r2 = float((1 - (e ** 2).sum(axis=0) / sst).mean())
m = re.search(r"test RMSE (\S+), MAE (\S+), R2 (\S+) \(256 samples\), loss (\S+)", open("eval.txt").read())
rmse_e, mae_e, r2_e, loss_e = (float(m.group(i).rstrip(",")) for i in range(1, 5))
print(f"from predict: rmse {mse ** 0.5:.6g} mae {mae:.6g} r2 {r2:.6f} mse {mse:.6g}")
print(f"from eval:    rmse {rmse_e:.6g} mae {mae_e:.6g} r2 {r2_e:.6f} loss {loss_e:.6g}")
for name, a, b in (("rmse", mse ** 0.5, rmse_e), ("mae", mae, mae_e), ("loss", mse, loss_e)):
    assert abs(a - b) <= 2e-5 * abs(b), f"{name}: {a} from predict, {b} from eval"
assert abs(r2 - r2_e) <= 2e-5, f"r2: {r2} from predict, {r2_e} from eval"
assert r2_e > 0.5, f"the model learned little: R2 {r2_e}"
PY
  "$hpdl" export --checkpoint run --output reg.onnx >export.txt 2>&1 || fail "export failed: $(cat export.txt)"
  grep -q "output \[N, 2\] values" export.txt || fail "export did not write the 2 values: $(cat export.txt)"
  "${PYTHON:-/usr/bin/python3}" "$(dirname "$ex")/tests/integration/onnx_check.py" values reg.onnx data/test_x.npy pred.txt \
    >check.txt 2>&1 || fail "the ONNX graph disagrees with hpdl predict: $(tail -5 check.txt)"
  grep -q "256 predictions match" check.txt || fail "nothing compared: $(cat check.txt)"
  ;;
regression_tune)
  # hpdl tune on a regression config: by default it minimizes the validation RMSE and says so
  # in every record; lr 1e-9 (no training) loses to lr 0.01; direction = maximize is obeyed
  # (it picks the untrained trial); accuracy is refused by the name of the search key.
  regression_data
  cat >search.toml <<EOS
config = "reg.toml"
method = "grid"
max_resource = 3
run_dir = "tune"
set = ["data.validation=256"]
[space]
"optimizer.lr" = { choice = [1e-9, 0.01] }
EOS
  "$hpdl" tune search.toml >out.txt 2>&1 || fail "tune failed: $(tail -5 out.txt)"
  grep -q "metric val_rmse (minimize)" out.txt || fail "the search does not name its metric and direction: $(head -2 out.txt)"
  [[ $(wc -l <tune/results.jsonl) -eq 2 ]] || fail "expected 2 results: $(cat tune/results.jsonl)"
  [[ $(grep -c '"metric_name":"val_rmse"' tune/results.jsonl) -eq 2 && $(grep -c '"direction":"minimize"' tune/results.jsonl) -eq 2 ]] \
    || fail "the records do not name the metric and direction: $(cat tune/results.jsonl)"
  grep -q '"test_rmse"' tune/results.jsonl || fail "no test RMSE at the full budget: $(cat tune/results.jsonl)"
  grep -q '"val_accuracy"' tune/results.jsonl && fail "a regression search reported accuracy"
  "${PYTHON:-python3}" - <<'PY' >cmp.txt 2>&1 || fail "the records are wrong: $(cat cmp.txt)"
import json
r = {j["trial"]: j for j in map(json.loads, open("tune/results.jsonl"))}
for j in r.values():
    assert j["metric"] == j["val_rmse"], j
    assert 0 <= j["val_mae"] <= j["val_rmse"] and j["val_r2"] <= 1, j
assert r[1]["val_rmse"] < 0.5 * r[0]["val_rmse"], f"lr 0.01 should beat lr 1e-9 clearly: {r}"
PY
  [[ $(sed -n 's/^best: trial \([0-9]*\) .*/\1/p' out.txt) == 001 ]] || fail "best is not the trained trial: $(tail -2 out.txt)"
  grep -q "^best: trial 001 .*val_rmse .* (minimize), test RMSE" out.txt || fail "best line: $(tail -1 out.txt)"
  "$hpdl" tune search.toml --set run_dir=tune_max --set direction=maximize >max.txt 2>&1 || fail "tune failed: $(tail -5 max.txt)"
  [[ $(sed -n 's/^best: trial \([0-9]*\) .*/\1/p' max.txt) == 000 ]] || fail "direction = maximize was ignored: $(tail -2 max.txt)"
  "$hpdl" tune search.toml --set run_dir=tune_acc --set metric=val_accuracy >acc.txt 2>&1 && fail "accuracy was accepted for mse"
  grep -q 'metric = "val_accuracy".*regression loss' acc.txt || fail "no clear refusal: $(cat acc.txt)"
  ;;
regression_explain)
  # hpdl explain on a regression model explains output --output K: its value equals predict's,
  # the integrated gradients' score gap is f_K(x) - f_K(0) computed by predict, and the
  # attributions add up to it (completeness); class-only options are refused by name.
  regression_data
  "$hpdl" train reg.toml >log 2>&1 || fail "training failed: $(tail -3 log)"
  "$hpdl" predict --checkpoint run --limit 4 data/test_x.npy >pred.txt 2>&1 || fail "predict failed: $(cat pred.txt)"
  "$hpdl" predict --checkpoint run zero.npy >zero.txt 2>&1 || fail "predict failed: $(cat zero.txt)"
  "$hpdl" explain --checkpoint run --method saliency,ig --output 1 --steps 256 --limit 4 --out ex \
    data/test_x.npy >ex.txt 2>&1 || fail "explain failed: $(cat ex.txt)"
  [[ $(grep -c $'\toutput 1\t' ex.txt) -eq 4 ]] || fail "expected 4 explanations of output 1: $(cat ex.txt)"
  [[ -f ex/test_x-ig.npy && -f ex/test_x-saliency.npy && -f ex/test_x-3-ig.png ]] || fail "maps missing: $(ls ex)"
  # The default heatmap scale of a 4-feature sample: 224 / 4 = 56 pixels a feature, input | map side by side.
  "${PYTHON:-python3}" -c "import struct; w, h = struct.unpack('>II', open('ex/test_x-0-ig.png', 'rb').read()[16:24]); assert (w, h) == (2 * 4 * 56, 56), (w, h)" \
    || fail "the heatmap of a feature vector has the wrong size"
  "${PYTHON:-python3}" - <<'PY' >cmp.txt 2>&1 || fail "explain is wrong: $(cat cmp.txt)"
import numpy as np
pred = [[float(v) for v in l.split("\t")[2].split()[1:]] for l in open("pred.txt")]
f0 = float(open("zero.txt").read().split("\t")[2].split()[2])  # output 1 at the baseline x = 0
rows = [l.rstrip("\n").split("\t") for l in open("ex.txt") if "\toutput 1\t" in l]
maps = np.load("ex/test_x-ig.npy")
assert maps.shape == (4, 1, 4), maps.shape
for i, r in enumerate(rows):
    value = float(r[2].split()[1])
    ig_sum, gap = (float(c.split("=")[1]) for c in r[4:6])
    print(f"sample {i}: value {value} (predict {pred[i][1]}), gap {gap} (predict {pred[i][1] - f0}), ig sum {ig_sum}")
    assert abs(value - pred[i][1]) <= 1e-5 * max(1, abs(value)), "explain's value is not predict's output 1"
    assert abs(gap - (pred[i][1] - f0)) <= 1e-5, "the score gap is not f_1(x) - f_1(0)"
    assert abs(ig_sum - gap) <= 0.02 * abs(gap) + 2e-3, "integrated gradients are not complete"
    assert abs(float(maps[i].sum()) - ig_sum) <= 1e-4 * max(1, abs(ig_sum)), "the .npy map does not sum to ig_sum"
PY
  "$hpdl" explain --checkpoint run --method ig --target 1 --out ex data/test_x.npy >bad.txt 2>&1 && fail "--target was accepted"
  grep -q "explain --target: .*regression.*--output" bad.txt || fail "no clear refusal of --target: $(cat bad.txt)"
  "$hpdl" explain --checkpoint run --method ig --deletion 5 --out ex data/test_x.npy >bad.txt 2>&1 && fail "--deletion was accepted"
  grep -q "explain --deletion: " bad.txt || fail "no clear refusal of --deletion: $(cat bad.txt)"
  "$hpdl" explain --checkpoint run --method ig --output 2 --out ex data/test_x.npy >bad.txt 2>&1 && fail "--output 2 was accepted"
  grep -q "explain --output 2: the model has 2 output(s)" bad.txt || fail "no clear refusal of --output 2: $(cat bad.txt)"
  ;;
train_ema)
  # train.ema_decay (weight averaging): evaluation reports the averages' metrics beside the live
  # weights' (they differ), checkpoints hold both and the update count, hpdl eval evaluates the
  # averages (and train.keep_best keeps them), a run cut into chunks ends bitwise where the straight
  # run ends, bad values are refused.
  args=("$ex/fashion_mnist/mlp.toml" "${small[@]}" --set train.epochs=3 --set data.validation=59000
        --set train.ema_decay=0.9 --set train.keep_best=true)
  "$hpdl" train "${args[@]}" --set train.run_dir=straight >straight.log 2>&1 || fail "straight run failed: $(tail -3 straight.log)"
  grep -q "weight averaging: decay 0.9" straight.log || fail "no weight-averaging log line: $(head -5 straight.log)"
  "${PYTHON:-python3}" - <<'PY' >check.txt 2>&1 || fail "metrics: $(cat check.txt)"
import json
recs = [json.loads(l) for l in open("straight/metrics.jsonl") if '"type":"epoch"' in l]
assert len(recs) == 3, recs
for r in recs:
    for k in ("test_accuracy", "live_test_accuracy", "val_accuracy", "live_val_accuracy"):
        assert k in r, (k, r)
# the averages are another model: their test loss differs from the live weights'
assert any(r["test_loss"] != r["live_test_loss"] for r in recs), recs
s = json.load(open("straight/summary.json"))
assert s["ema_decay"] == 0.9 and s["ema_updates"] == s["steps"] > 0, s
side = json.load(open(sorted(__import__("glob").glob("straight/checkpoints/*.json"))[-1]))
assert side["extra"]["ema_updates"] == s["steps"], side["extra"]
best = [r for r in recs if r["epoch"] == s["best_epoch"]][0]  # keep_best: selected on the averages' val_loss
assert s["best_metric"] == best["val_loss"], (s, best)
print("%.2f" % (100 * recs[-1]["test_accuracy"]), "%.2f" % (100 * recs[-1]["live_test_accuracy"]),
      "%.2f" % (100 * best["test_accuracy"]), "%.2f" % (100 * best["live_test_accuracy"]))
PY
  read -r ema_acc live_acc best_acc best_live_acc <check.txt
  last=$(ls straight/checkpoints/*.safetensors | tail -1)
  grep -q '"ema.1.weight"' "$last" || fail "the checkpoint has no averages: $(head -c 300 "$last" | tr -c '[:print:]' ' ')"
  "$hpdl" eval --checkpoint straight >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  grep -q "test accuracy ${ema_acc}%" eval.txt \
    || fail "hpdl eval did not evaluate the averages (run: ${ema_acc}%, live weights ${live_acc}%): $(cat eval.txt)"
  "$hpdl" eval --checkpoint straight --live >live.txt 2>&1 || fail "eval --live failed: $(cat live.txt)"
  grep -q "test accuracy ${live_acc}%" live.txt || fail "eval --live: $(cat live.txt), recorded live ${live_acc}%"
  "$hpdl" eval --checkpoint straight --live --best >lb.txt 2>&1 && fail "--live with --best was accepted"
  grep -q -- "--live and --best" lb.txt || fail "no clear error for --live --best: $(cat lb.txt)"
  # the best model is the one evaluated: the averages
  "$hpdl" eval --checkpoint straight --best >best.txt 2>&1 || fail "eval --best failed: $(cat best.txt)"
  grep -q "test accuracy ${best_acc}%" best.txt \
    || fail "the best file does not hold the averages (run: ${best_acc}%, live ${best_live_acc}%): $(cat best.txt)"
  "$hpdl" train "${args[@]}" --set train.run_dir=chunked --set train.stop_after_epoch=1 >c1.log 2>&1 \
    || fail "chunk 1 failed: $(tail -3 c1.log)"
  "$hpdl" train --resume chunked --set train.stop_after_epoch=0 >c2.log 2>&1 || fail "chunk 2 failed: $(tail -3 c2.log)"
  cmp "$last" "chunked/checkpoints/$(basename "$last")" || fail "the chunked run's weights or averages differ from the straight run's"
  "$hpdl" train "${args[@]}" --set train.run_dir=bad --set train.ema_decay=1 >bad.log 2>&1 && fail "ema_decay = 1 was accepted"
  grep -q "train.ema_decay must be in \[0, 1)" bad.log || fail "no clear error for ema_decay = 1: $(cat bad.log)"
  "$hpdl" train "${args[@]}" --set train.run_dir=bad --set train.pipeline_stages=2 >bad.log 2>&1 && fail "EMA with a pipeline was accepted"
  grep -q "train.ema_decay = 0.9 cannot be combined with train.pipeline_stages = 2" bad.log \
    || fail "no clear error for EMA with pipeline stages: $(cat bad.log)"
  ;;
train_bf16_cpu)
  # train.precision = "bf16" on the CPU (design decision 69): LeNet-5 reaches a sane accuracy, the log
  # says what computes in bfloat16, checkpoints stay float32 and resume across fp32 and bf16 runs,
  # fp16 stays GPU-only. A CPU without AVX512_BF16 must refuse bf16 naming its ISA.
  "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.precision=fp16 >out 2>err \
    && fail "fp16 on the CPU was accepted"
  grep -q 'fp16.*needs train.device = "cuda"' err || fail "no clear fp16 refusal: $(cat err)"
  if ! "$hpdl" info 2>&1 | grep -Eq "ISA (avx512_core_bf16|avx512_core_amx)"; then
    "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.precision=bf16 >out 2>err \
      && fail "bf16 accepted on a CPU without bfloat16 kernels"
    grep -q "AVX512_BF16" err || fail "the bf16 refusal does not name the ISA: $(cat err)"
    echo "PASS [$case_name] (this CPU has no bfloat16 kernels: refusal checked)"; exit 0
  fi
  "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.precision=bf16 --set train.max_steps=100 \
    --set train.run_dir=bf >bf.log 2>&1 || fail "bf16 training failed: $(tail -3 bf.log)"
  grep -q "precision bf16 on the CPU" bf.log || fail "no bf16 log line: $(head -5 bf.log)"
  "$hpdl" eval --checkpoint bf >eval.txt 2>&1 || fail "eval failed: $(cat eval.txt)"
  acc=$(sed -n 's/test accuracy \([0-9.]*\)%.*/\1/p' eval.txt)
  awk -v a="$acc" 'BEGIN { exit !(a > 60) }' || fail "bf16 LeNet-5 test accuracy '$acc'% after 100 steps is too low"
  # the safetensors header (after its 8-byte length) names every tensor's dtype: float32, no bfloat16
  header=$(head -c 100000 bf/checkpoints/step-0000000100.safetensors | tr -c '[:print:]' ' ')
  grep -q '"F32"' <<<"$header" && ! grep -q '"BF16"' <<<"$header" || fail "the bf16 run's checkpoint is not float32"
  # fp32 -> bf16 and bf16 -> fp32 resume: the other precision continues from the checkpoint
  "$hpdl" train "$ex/fashion_mnist/lenet5.toml" "${small[@]}" --set train.max_steps=20 --set train.checkpoint_every_steps=10 \
    --set train.run_dir=f32 >f32.log 2>&1 || fail "fp32 training failed: $(tail -3 f32.log)"
  "$hpdl" train --resume f32 --set train.precision=bf16 --set train.max_steps=40 >r1.log 2>&1 \
    || fail "bf16 resume of an fp32 run failed: $(tail -3 r1.log)"
  grep -q "resumed from .*step-0000000020" r1.log && grep -q "precision bf16 on the CPU" r1.log \
    || fail "the bf16 resume did not continue from step 20 in bf16: $(head -8 r1.log)"
  "$hpdl" train --resume bf --set train.precision=fp32 --set train.max_steps=110 >r2.log 2>&1 \
    || fail "fp32 resume of a bf16 run failed: $(tail -3 r2.log)"
  grep -q "resumed from .*step-0000000100" r2.log || fail "the fp32 resume did not continue from step 100: $(head -8 r2.log)"
  ! grep -q "precision bf16" r2.log || fail "the fp32 resume still computes in bf16"
  ;;
early_stopping_stops)
  # train.early_stopping_patience = 2 on a run whose validation loss cannot improve by min_delta (lr
  # 1e-7): it stops after epoch 3 of 10 with a checkpoint, says why in the log and summary.json, and a
  # resume trains no further (unless the patience is raised). An unknown train.monitor is refused.
  regression_data
  es=(reg.toml --set data.validation=256 --set train.epochs=10 --set optimizer.lr=1e-7
      --set train.early_stopping_patience=2 --set train.early_stopping_min_delta=0.01)
  "$hpdl" train "${es[@]}" >log 2>&1 || fail "train failed: $(tail -3 log)"
  grep -q "early stopping after epoch 3: val_loss has not improved for 2 evaluations" log \
    || fail "no early-stopping line: $(tail -3 log)"
  [[ -f run/checkpoints/step-0000000048.json ]] || fail "no checkpoint where it stopped (step 48): $(ls run/checkpoints)"
  python3 - <<'PY' || fail "summary.json does not say it stopped early"
import json
s = json.load(open("run/summary.json"))
assert s["stopped_early"] is True and s["epochs"] == 3 and s["steps"] == 48, s
assert s["monitor"] == "val_loss" and s["best_epoch"] == 1 and s["best_step"] == 16, s
epochs = [r for r in map(json.loads, open("run/metrics.jsonl")) if r.get("type") == "epoch"]
assert [r["monitor_improved"] for r in epochs] == [True, False, False], epochs
assert s["best_metric"] == epochs[0]["val_loss"], (s["best_metric"], epochs[0])
PY
  # The batch-job scripts take a run that stopped early as complete (no resume, no resubmission).
  (source "$ex/jobs/hpdl_job.sh" && hpdl_run_complete run) || fail "hpdl_job.sh does not take the stopped run as complete"
  cp run/summary.json summary.before
  "$hpdl" train --resume run >resume.log 2>&1 || fail "resuming the stopped run failed: $(tail -3 resume.log)"
  grep -q "stopped early: val_loss did not improve for 2 evaluations .*not training further" resume.log \
    || fail "the resume did not say the run is finished: $(tail -3 resume.log)"
  cmp -s run/summary.json summary.before || fail "resuming a stopped run rewrote its summary.json"
  [[ $(ls run/checkpoints/step-*.json | tail -1) == run/checkpoints/step-0000000048.json ]] \
    || fail "resuming a stopped run trained further: $(ls run/checkpoints)"
  "$hpdl" train --resume run --set train.early_stopping_patience=4 >more.log 2>&1 || fail "resume failed: $(tail -3 more.log)"
  grep -q "early stopping after epoch 5: val_loss has not improved for 4 evaluations" more.log \
    || fail "a raised patience did not continue to epoch 5: $(tail -3 more.log)"
  "$hpdl" train reg.toml --set data.validation=256 --set train.monitor=val_accuracy --set train.run_dir=bad >bad.log 2>&1 \
    && fail "train.monitor = val_accuracy was accepted for a regression loss"
  grep -q "train.monitor = 'val_accuracy' is not a metric train.loss = 'mse' reports; use auto or one of val_loss, val_rmse" \
    bad.log || fail "no clear refusal of the monitor: $(cat bad.log)"
  ;;
early_stopping_resume_chunks)
  # The patience count and the best value survive --resume: the run cut after epoch 2 (one bad
  # evaluation so far) stops after epoch 3 as the straight run does, with the same best.safetensors
  # (epoch 1's model) and the same final checkpoint.
  regression_data
  es=(reg.toml --set data.validation=256 --set train.epochs=10 --set optimizer.lr=1e-7 --set train.keep_best=true
      --set train.early_stopping_patience=2 --set train.early_stopping_min_delta=0.01)
  "$hpdl" train "${es[@]}" --set train.run_dir=straight >straight.log 2>&1 || fail "straight run failed: $(tail -3 straight.log)"
  "$hpdl" train "${es[@]}" --set train.run_dir=chunked --set train.stop_after_epoch=2 >c1.log 2>&1 \
    || fail "chunk 1 failed: $(tail -3 c1.log)"
  grep -q "stopped after epoch 2" c1.log || fail "chunk 1 did not stop after epoch 2: $(tail -3 c1.log)"
  "$hpdl" train --resume chunked --set train.stop_after_epoch=0 >c2.log 2>&1 || fail "chunk 2 failed: $(tail -3 c2.log)"
  grep -q "early stopping after epoch 3: val_loss has not improved for 2 evaluations (train.early_stopping_patience = 2); best .* after epoch 1" \
    c2.log || fail "the resumed chunk did not stop after epoch 3: $(tail -3 c2.log)"
  ! grep -q "best val_loss so far" c2.log || fail "the resumed chunk forgot the best value and wrote a new best model"
  cmp straight/checkpoints/best.safetensors chunked/checkpoints/best.safetensors || fail "the best models differ"
  cmp straight/checkpoints/step-0000000048.safetensors chunked/checkpoints/step-0000000048.safetensors \
    || fail "the final checkpoints differ"
  ;;
keep_best_eval)
  # train.keep_best on a run whose validation loss is lowest before the last epoch: best.safetensors
  # holds that epoch's model (hpdl eval --best prints that epoch's recorded test metrics, plain eval
  # the last epoch's), is left by keep_checkpoints = 1, and predict, export and explain read it with --best.
  regression_data
  "$hpdl" train reg.toml --set data.validation=256 --set train.epochs=10 --set optimizer.lr=0.05 --set train.keep_best=true \
    --set train.keep_checkpoints=1 >log 2>&1 || fail "train failed: $(tail -3 log)"
  grep -q "best val_loss so far (.*): wrote run/checkpoints/best.safetensors" log || fail "no best-model line: $(tail -3 log)"
  [[ $(ls run/checkpoints/step-*.json | wc -l) -eq 1 && -f run/checkpoints/best.safetensors ]] \
    || fail "keep_checkpoints = 1 should leave one checkpoint and the best model: $(ls run/checkpoints)"
  python3 - >expected.txt <<'PY' || fail "summary.json or the best file's metadata is wrong"
import json, struct
s = json.load(open("run/summary.json"))
epochs = {r["epoch"]: r for r in map(json.loads, open("run/metrics.jsonl")) if r.get("type") == "epoch"}
best = min(epochs.values(), key=lambda r: r["val_loss"])
assert s["monitor"] == "val_loss" and s["best_epoch"] == best["epoch"] and s["best_metric"] == best["val_loss"], s
assert s["best_model"] == "checkpoints/best.safetensors" and s["stopped_early"] is False, s
b = open("run/checkpoints/best.safetensors", "rb").read()
meta = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
assert meta["hpdl.format"] == "hpdl-best-model" and meta["hpdl.monitor"] == "val_loss", meta
assert int(meta["hpdl.epoch"]) == best["epoch"] and float(meta["hpdl.best"]) == best["val_loss"], meta
assert json.loads(meta["hpdl.evaluation"])["test_rmse"] == best["test_rmse"], meta
print("%.6g %.6g %d" % (best["test_rmse"], epochs[10]["test_rmse"], best["epoch"]))
PY
  read -r best_rmse last_rmse best_epoch <expected.txt
  "$hpdl" eval --checkpoint run --best >best.txt 2>&1 || fail "eval --best failed: $(cat best.txt)"
  grep -q "^test RMSE $best_rmse," best.txt || fail "eval --best: $(cat best.txt), recorded test RMSE $best_rmse"
  "$hpdl" eval --checkpoint run >last.txt 2>&1 || fail "eval failed: $(cat last.txt)"
  grep -q "^test RMSE $last_rmse," last.txt || fail "eval: $(cat last.txt), recorded test RMSE $last_rmse"
  [[ $best_epoch -lt 10 ]] || echo "note: the best epoch is the last one here; best and newest are the same model"
  "$hpdl" predict --checkpoint run --best zero.npy >pb.txt 2>&1 || fail "predict --best failed: $(cat pb.txt)"
  "$hpdl" predict --checkpoint run zero.npy >pl.txt 2>&1 || fail "predict failed: $(cat pl.txt)"
  [[ $best_epoch -eq 10 ]] || ! cmp -s pb.txt pl.txt || fail "predict --best predicted with the newest checkpoint"
  "$hpdl" export --checkpoint run --best -o best.onnx >ex.txt 2>&1 || fail "export --best failed: $(cat ex.txt)"
  "$hpdl" explain --checkpoint run --best --method saliency --limit 1 --out heat data/test_x.npy >xp.txt 2>&1 \
    || fail "explain --best failed: $(cat xp.txt)"
  "$hpdl" train reg.toml --set train.epochs=1 --set train.run_dir=plain >plain.log 2>&1 || fail "plain run failed"
  "$hpdl" eval --checkpoint plain --best >nobest.txt 2>&1 && fail "eval --best of a run without keep_best succeeded"
  grep -q "trained without train.keep_best = true" nobest.txt || fail "no clear error: $(cat nobest.txt)"
  ;;
*) fail "unknown case" ;;
esac
echo "PASS [$case_name]"
