#!/usr/bin/env bash
# Checkpoint/restart of hpdl_dcgan (ctest -R GanExample.resume): resume_test.sh BIN WORKDIR [GAN OPTIONS...].
# A straight run of 6 steps against a run of 3 steps with --checkpoint-every 2 continued by a
# second process with --resume --steps 6 (checkpointing on): the step-6 losses and the written generator(s) must be
# identical, byte for byte. Then a --resume with other options, and one without a checkpoint,
# must be refused with messages that name the problem. --checkpoint-async must write the same
# checkpoints, and a run must resume from them to the same step 6. HPDL_LAUNCH runs every process under a
# launcher (HPDL_LAUNCH="mpirun -np 2": data parallel, ranks resuming from rank 0's checkpoints).
set -uo pipefail
bin=$1; work=$2; shift 2
read -r -a launch <<<"${HPDL_LAUNCH:-}"
run() { "${launch[@]}" "$bin" "$@"; }
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
small=(--features 8 --train-images 256 --classifier-steps 5 --score-samples 64 --log-every 1 --grid-every 2 "$@")

run "${small[@]}" --steps 6 --out straight >straight.log 2>&1 || { cat straight.log; fail "the straight run failed"; }
run "${small[@]}" --steps 3 --checkpoint-every 2 --out resumed >first.log 2>&1 || { cat first.log; fail "the first part failed"; }
[[ -f resumed/checkpoints/step-0000000002.json && -f resumed/checkpoints/step-0000000003.json ]] ||
  fail "no checkpoints at steps 2 and 3 (the last step): $(ls resumed/checkpoints)"
# --checkpoint-async writes the same bytes from a background thread (before the resume prunes them).
run "${small[@]}" --steps 3 --checkpoint-every 2 --checkpoint-async --out async >async.log 2>&1 ||
  { cat async.log; fail "the --checkpoint-async run failed"; }
for f in step-0000000002.safetensors step-0000000003.safetensors; do  # (sidecars hold the write time)
  cmp resumed/checkpoints/$f async/checkpoints/$f || fail "--checkpoint-async wrote another $f"
done
grep -q "checkpoint: step 3, written in the background" async.log || fail "no background checkpoint line: $(tail -3 async.log)"
run "${small[@]}" --steps 6 --checkpoint-every 2 --resume --out resumed >second.log 2>&1 ||
  { cat second.log; fail "the resumed run failed"; }
[[ "$(ls resumed/checkpoints | tr '\n' ' ')" == "step-0000000004.json step-0000000004.safetensors step-0000000006.json step-0000000006.safetensors " ]] ||
  fail "the resumed run should have kept its checkpoints of steps 4 and 6: $(ls resumed/checkpoints)"
grep -q "classifier: LeNet-5 loaded from resumed/classifier.safetensors" second.log || fail "the classifier was trained again"
grep -q "resumed from resumed/checkpoints/step-0000000003.json at step 3 of 6" second.log || fail "not resumed at step 3"
grep -q "^step     4 " second.log || fail "the resumed run does not log step 4"
# The step-6 line without its elapsed seconds.
last() { grep "^step     6 " "$1" | sed 's/  [0-9.]* s$//'; }
[[ -n "$(last straight.log)" && "$(last straight.log)" == "$(last second.log)" ]] ||
  fail "step 6 differs: '$(last straight.log)' straight, '$(last second.log)' resumed"
# A run resumes from the background writer's checkpoints, and keeps writing in the background.
run "${small[@]}" --steps 6 --checkpoint-every 2 --checkpoint-async --resume --out async >async2.log 2>&1 ||
  { cat async2.log; fail "the resume of the --checkpoint-async run failed"; }
[[ "$(last straight.log)" == "$(last async2.log)" ]] ||
  fail "step 6 differs: '$(last straight.log)' straight, '$(last async2.log)' resumed from background checkpoints"
cmp resumed/checkpoints/step-0000000006.safetensors async/checkpoints/step-0000000006.safetensors ||
  fail "the background writer's step-6 checkpoint differs"
for f in generator.onnx generator_avg.onnx; do
  [[ -f straight/$f || -f resumed/$f ]] || continue
  cmp straight/$f resumed/$f || fail "$f of the resumed run differs from the straight run's"
done

run "${small[@]}" --steps 6 --resume --seed 1 --out resumed >seed.log 2>&1 && fail "a resume with another --seed ran"
grep -Eq "error: resumed/checkpoints/step-0000000006.json: the checkpoint's .* options differ from this run's: seed = 0 in the checkpoint, 1 here" seed.log ||
  { cat seed.log; fail "no clear message for a resume with another seed"; }
run "${small[@]}" --steps 6 --resume --out empty >empty.log 2>&1 && fail "a resume without a checkpoint ran"
grep -Eq "error: hpdl_dcgan: --resume: no valid checkpoint in empty/checkpoints" empty.log ||
  { cat empty.log; fail "no clear message for a resume without a checkpoint"; }
echo "resume ok: step 6 and the generator(s) equal the straight run's"
