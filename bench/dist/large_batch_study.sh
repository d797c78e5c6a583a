#!/usr/bin/env bash
# Large-batch study: LeNet-5 on Fashion-MNIST at global batch 128, 1024, 4096
# and 8192 with SGD (linear lr scaling + warmup, Goyal et al. 2017), LARS
# (You, Gitman & Ginsburg 2017) and LAMB (You et al. 2020), all with the same
# epoch budget; prints a Markdown table of final test accuracy from each run's
# summary.json. Configs: examples/large_batch/lenet5_{sgd,lars,lamb}.toml.
#
#   bench/dist/large_batch_study.sh                      # the full matrix (slow: run on a quiet machine)
#   RANKS=4 bench/dist/large_batch_study.sh              # the same under mpirun -np 4 (global batch unchanged)
#   MAX_STEPS=3 EPOCHS=1 BATCHES="128 1024" bench/dist/large_batch_study.sh   # smoke test of the script
#
# Environment: HPDL (binary, default build/bin/hpdl), EPOCHS (10), BATCHES,
# OPTIMIZERS ("sgd lars lamb"), RANKS (1), THREADS (0 = all cores), MAX_STEPS
# (0 = none), OUT (runs/large_batch_study), SEED (1), EXTRA (more --set args).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
hpdl=${HPDL:-$root/build/bin/hpdl}
epochs=${EPOCHS:-10}
batches=${BATCHES:-"128 1024 4096 8192"}
optimizers=${OPTIMIZERS:-"sgd lars lamb"}
ranks=${RANKS:-1}
threads=${THREADS:-0}
max_steps=${MAX_STEPS:-0}
out=${OUT:-runs/large_batch_study}
seed=${SEED:-1}
[[ -x $hpdl ]] || { echo "large_batch_study: no hpdl binary at $hpdl (build it, or set HPDL=...)" >&2; exit 1; }
mkdir -p "$out"

# Per-optimizer lr at global batch B (base batch 128):
#   sgd:  the config's lr_scaling = "linear" scales 0.05 by B/128 inside hpdl;
#   lars: 1.0 * sqrt(B/128) (the paper's lr grows about as sqrt(B) at eta = 0.001);
#   lamb: 0.002 * sqrt(B/128) (the LAMB paper's square-root scaling).
lr_for() {  # $1 optimizer, $2 global batch
  case $1 in
    sgd) echo 0.05 ;;
    lars) awk -v b="$2" 'BEGIN { printf "%.6g", 1.0 * sqrt(b / 128) }' ;;
    lamb) awk -v b="$2" 'BEGIN { printf "%.6g", 0.002 * sqrt(b / 128) }' ;;
    *) echo "large_batch_study: unknown optimizer $1 (sgd, lars, lamb)" >&2; exit 1 ;;
  esac
}
# Warmup grows with the batch (Goyal et al.: the larger the lr jump, the
# longer), capped at half the epoch budget (the schedule needs steps after it).
warmup_for() {
  local w
  case $1 in 128) w=0.5 ;; 1024) w=1 ;; *) w=2 ;; esac
  awk -v w="$w" -v e="$epochs" 'BEGIN { printf "%g", (w < e / 2 ? w : e / 2) }'
}

launch=("$hpdl")
[[ $ranks -gt 1 ]] && launch=(${MPIRUN:-mpirun} --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS "$hpdl")

for opt in $optimizers; do
  for b in $batches; do
    (( b % ranks == 0 )) || { echo "large_batch_study: batch $b is not divisible by RANKS=$ranks" >&2; exit 1; }
    dir=$out/${opt}_b$b
    args=(train "$root/examples/large_batch/lenet5_$opt.toml"
          --set "data.batch_size=$((b / ranks))" --set "optimizer.lr=$(lr_for "$opt" "$b")"
          --set "schedule.warmup_epochs=$(warmup_for "$b")" --set "train.epochs=$epochs"
          --set "train.max_steps=$max_steps" --set "train.threads=$threads" --set "train.seed=$seed"
          --set "train.run_dir=$dir")
    # shellcheck disable=SC2206
    [[ -n ${EXTRA:-} ]] && args+=($EXTRA)
    echo "== $opt, global batch $b: ${launch[*]} ${args[*]}" >&2
    "${launch[@]}" "${args[@]}" >"$out/${opt}_b$b.log" 2>&1 \
      || { echo "large_batch_study: run $opt b$b failed; see $out/${opt}_b$b.log" >&2; tail -3 "$out/${opt}_b$b.log" >&2; exit 1; }
  done
done

# summary.json value of key $2 in file $1 (flat JSON written by hpdl), or "".
json_value() { sed -n "s/.*\"$2\": *\([-0-9.eE+]*\).*/\1/p" "$1" | head -1; }

printf '\nLeNet-5 / Fashion-MNIST, %s epochs, %s rank(s): final test accuracy (%%)\n\n' "$epochs" "$ranks"
header="| global batch |"; rule="|---:|"
for opt in $optimizers; do header+=" $opt |"; rule+="---:|"; done
echo "$header"; echo "$rule"
for b in $batches; do
  row="| $b |"
  for opt in $optimizers; do
    s=$out/${opt}_b$b/summary.json
    acc=$([[ -f $s ]] && json_value "$s" test_accuracy || true)
    if [[ -n $acc ]]; then row+=" $(awk -v a="$acc" 'BEGIN { printf "%.2f", 100 * a }') |"; else row+=" n/a |"; fi
  done
  echo "$row"
done
echo
echo "n/a: the run ended before its first evaluation (train.max_steps stops mid-epoch)."
