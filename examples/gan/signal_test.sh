#!/usr/bin/env bash
# Job signals in hpdl_dcgan (ctest -R GanExample.signals): signal_test.sh BIN WORKDIR.
# A long run with checkpoints: SIGUSR1 after step 3 writes a checkpoint and the run goes on; SIGTERM
# then writes one and stops with exit 0 and a message naming the step; --resume continues from that
# step to the end. HPDL_LAUNCH runs it under a launcher (HPDL_LAUNCH="mpirun -np 2": the signal goes
# to mpirun, which passes it to the ranks; they agree on it and stop at one step).
set -uo pipefail
bin=$1; work=$2
read -r -a launch <<<"${HPDL_LAUNCH:-}"
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
fail() { echo "FAIL: $*"; kill "$pid" 2>/dev/null; exit 1; }
small=(--features 8 --train-images 512 --classifier-steps 5 --score-samples 64 --log-every 1 --grid-every 100000)
# Waits up to 120 s for a line matching $1 in run.log.
wait_for() { for _ in $(seq 1200); do grep -q "$1" run.log && return 0; sleep 0.1; done; return 1; }

"${launch[@]}" "$bin" "${small[@]}" --steps 1000000 --checkpoint-every 1000000 --out run >run.log 2>&1 &
pid=$!
wait_for "^step     3 " || { cat run.log; fail "no step 3 within 120 s"; }
kill -USR1 "$pid"
wait_for "^checkpoint: " || { cat run.log; fail "SIGUSR1 wrote no checkpoint"; }
first=$(grep -m1 "^checkpoint: " run.log)
step=$(sed -n 's/.*step-0*\([0-9][0-9]*\)\.json$/\1/p' <<<"$first")
wait_for "^step *$((step + 2)) " || { cat run.log; fail "the run did not go on after the SIGUSR1 checkpoint at step $step"; }
kill -TERM "$pid"
wait "$pid"; rc=$?
# hpdl_dcgan exits 0; Open MPI's mpirun exits 1 after it was sent SIGTERM itself, whatever its ranks return.
[[ $rc -eq 0 || ( ${#launch[@]} -gt 0 && $rc -eq 1 ) ]] || { cat run.log; fail "exit code $rc after SIGTERM (expected 0)"; }
stop=$(sed -n 's/^hpdl_dcgan: stopped by signal at step \([0-9]*\) after a checkpoint.*/\1/p' run.log)
[[ -n "$stop" && "$stop" -gt "$step" ]] || { cat run.log; fail "no stop message after the SIGUSR1 checkpoint at step $step"; }
[[ -f run/checkpoints/step-$(printf %010d "$stop").json ]] || fail "no checkpoint at the stop step $stop: $(ls run/checkpoints)"
grep -q "^trained generator" run.log && fail "a stopped run scored as if it had finished"

"${launch[@]}" "$bin" "${small[@]}" --steps $((stop + 2)) --resume --out run >resumed.log 2>&1 ||
  { cat resumed.log; fail "the resumed run failed"; }
grep -q "resumed from run/checkpoints/step-$(printf %010d "$stop").json at step $stop of $((stop + 2))" resumed.log ||
  { cat resumed.log; fail "not resumed at the stop step $stop"; }
grep -q "trained generator: confidence" resumed.log || { cat resumed.log; fail "the resumed run did not finish"; }
echo "signals ok: checkpoint at step $step on SIGUSR1, stop at step $stop on SIGTERM, resumed to $((stop + 2))"
