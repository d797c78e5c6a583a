# shellcheck shell=bash
# hpdl_job.sh: the logic the batch-job scripts in this folder share, sourced by
# slurm_train.sbatch, pbs_train.sh and slurm_tune.sbatch. It answers "is the run
# finished?", "has it a checkpoint?", "which launcher?", stages a packed store
# to node-local storage, runs a launcher with the stop signal forwarded, and
# chains the next job. Settings are environment variables (docs/jobs.md).

hpdl_job_log() { echo "hpdl-job: $*" >&2; }
hpdl_job_die() { echo "hpdl-job: error: $*" >&2; exit 1; }

# The batch system this job runs under: slurm, pbs or none (run by hand).
hpdl_job_system() {
  if [[ -n ${SLURM_JOB_ID:-} ]]; then echo slurm
  elif [[ -n ${PBS_JOBID:-} ]]; then echo pbs
  else echo none
  fi
}

hpdl_job_id() { echo "${SLURM_JOB_ID:-${PBS_JOBID:-local$$}}"; }

# Sets the array HPDL_LAUNCHER: HPDL_LAUNCH split into words when it is set (set
# but empty: run hpdl directly), else srun under Slurm, mpiexec under PBS,
# nothing outside a batch system.
hpdl_job_launcher() {
  local words
  if [[ -n ${HPDL_LAUNCH+set} ]]; then words=$HPDL_LAUNCH
  else
    case $(hpdl_job_system) in
      slurm) words=srun ;;
      pbs) words=mpiexec ;;
      *) words= ;;
    esac
  fi
  read -r -a HPDL_LAUNCHER <<<"$words"
}

# A key of the run's resolved config (RUN_DIR/config.toml): $1 run dir, $2 section, $3 key.
hpdl_run_config_value() {
  awk -F' *= *' -v sec="[$2]" -v key="$3" '/^\[/ { s = $0 } s == sec && $1 == key { print $2; exit }' \
    "$1/config.toml" 2>/dev/null
}

# The newest checkpoint's sidecar (RUN_DIR/checkpoints/step-N.json); fails when there is none.
hpdl_run_checkpoint() {
  local f last=
  for f in "$1"/checkpoints/step-*.json; do [[ -f $f ]] && last=$f; done
  [[ -n $last ]] && echo "$last"
}

# The global step of the newest checkpoint, 0 when there is none.
hpdl_run_checkpoint_step() {
  local f
  f=$(hpdl_run_checkpoint "$1") || { echo 0; return; }
  f=${f##*/step-}; f=${f%.json}
  echo $((10#$f))
}

# The epochs the newest checkpoint has completed (its "epoch" field), 0 when there is none.
hpdl_run_checkpoint_epoch() {
  local f e
  f=$(hpdl_run_checkpoint "$1") || { echo 0; return; }
  e=$(grep -o '"epoch": *[0-9]*' "$f" | head -1 | grep -o '[0-9]*$')
  echo "${e:-0}"
}

# Succeeds when the run is complete: summary.json says it was not interrupted and
# it reached train.epochs (or train.max_steps, when that is set), or it stopped
# early (train.early_stopping_patience: a resume would train nothing).
hpdl_run_complete() {
  local dir=$1 s epochs max_steps done_epochs done_steps
  s=$dir/summary.json
  [[ -f $s ]] || return 1
  grep -q '"interrupted": *false' "$s" || return 1
  grep -q '"stopped_early": *true' "$s" && return 0
  epochs=$(hpdl_run_config_value "$dir" train epochs)
  max_steps=$(hpdl_run_config_value "$dir" train max_steps)
  done_epochs=$(grep -o '"epochs": *[0-9]*' "$s" | grep -o '[0-9]*$')
  done_steps=$(grep -o '"steps": *[0-9]*' "$s" | grep -o '[0-9]*$')
  [[ -n $epochs && -n $done_epochs ]] || return 1
  ((done_epochs >= epochs)) && return 0
  [[ -n $max_steps && -n $done_steps ]] && ((max_steps > 0 && done_steps >= max_steps))
}

# Stages HPDL_STORE (a packed store on the shared file system) to node-local
# storage with `hpdl stage` under the launcher, and prints the local path.
# The local folder: HPDL_LOCAL_DIR, else $SLURM_TMPDIR, $TMPDIR, /tmp.
hpdl_job_stage() {
  local base dest
  base=${HPDL_LOCAL_DIR:-${SLURM_TMPDIR:-${TMPDIR:-/tmp}}}
  dest=$base/hpdl-store-$(hpdl_job_id)
  [[ -d $HPDL_STORE ]] || hpdl_job_die "HPDL_STORE=$HPDL_STORE is not a store folder (make one with: hpdl pack DATA -o STORE)"
  mkdir -p "$base" || hpdl_job_die "cannot create the node-local folder $base (set HPDL_LOCAL_DIR)"
  "${HPDL_LAUNCHER[@]}" "$HPDL_BIN" stage "$HPDL_STORE" --to "$dest" >&2 \
    || hpdl_job_die "staging $HPDL_STORE to $dest failed"
  echo "$dest"
}

# Runs "$@" in the background and waits for it. A TERM or USR1 to this script
# (the batch system's time limit: Slurm's --signal=B:USR1@T, its TERM at the
# limit, PBS's TERM, or HPDL_STOP_AFTER's timer) is forwarded to the launcher as
# HPDL_STOP_SIGNAL (TERM: hpdl writes a checkpoint and stops; srun and mpirun
# pass it on to every rank). Sets HPDL_JOB_SIGNALLED=1 and HPDL_JOB_SIGNAL (the
# signal's name) when that happened and returns the command's exit status.
HPDL_JOB_SIGNALLED=0
HPDL_JOB_SIGNAL=
HPDL_JOB_PID=
hpdl_job_on_signal() {
  HPDL_JOB_SIGNALLED=1 HPDL_JOB_SIGNAL=$1
  hpdl_job_log "SIG$1: forwarding SIG${HPDL_STOP_SIGNAL:-TERM} to the launcher"
  [[ -n $HPDL_JOB_PID ]] && kill -s "${HPDL_STOP_SIGNAL:-TERM}" "$HPDL_JOB_PID" 2>/dev/null
  return 0
}
hpdl_job_run() {
  local rc timer=
  trap 'hpdl_job_on_signal TERM' TERM
  trap 'hpdl_job_on_signal USR1' USR1
  "$@" &
  HPDL_JOB_PID=$!
  # A signal that came before the launcher existed is passed on now.
  ((HPDL_JOB_SIGNALLED)) && kill -s "${HPDL_STOP_SIGNAL:-TERM}" "$HPDL_JOB_PID" 2>/dev/null
  if [[ -n ${HPDL_STOP_AFTER:-} ]]; then
    # A self-timer for batch systems that send no warning before the limit.
    (
      trap 'kill "$s" 2>/dev/null; exit 0' TERM
      sleep "$HPDL_STOP_AFTER" & s=$!
      wait "$s" && kill -s USR1 "$$"
    ) </dev/null >/dev/null 2>&1 &
    timer=$!
  fi
  # wait returns early (status > 128) when a trapped signal arrives while the launcher
  # still runs; bash keeps an exited child's status, so the last wait returns it.
  while kill -0 "$HPDL_JOB_PID" 2>/dev/null; do wait "$HPDL_JOB_PID"; done
  wait "$HPDL_JOB_PID"; rc=$?
  HPDL_JOB_PID=
  [[ -n $timer ]] && kill "$timer" 2>/dev/null
  return "$rc"
}

# Submits the next job of the chain (HPDL_CHAIN): "dependency" (default) submits
# this script again to start after this job ends (sbatch --dependency=afterany,
# qsub -W depend=afterany), "requeue" puts this job back in the queue (Slurm:
# scontrol requeue; the job needs --requeue), "none" only says what to do.
# $1: the script to submit. HPDL_JOB_COUNT counts the jobs of the chain.
hpdl_job_resubmit() {
  local script=$1 next=$(( ${HPDL_JOB_COUNT:-1} + 1 )) chain=${HPDL_CHAIN:-dependency}
  [[ $chain == none || -f $script ]] \
    || hpdl_job_die "cannot resubmit $script: not a file (set HPDL_JOB_SCRIPT to this job script's path)"
  if (( next > ${HPDL_MAX_JOBS:-50} )); then
    hpdl_job_die "HPDL_MAX_JOBS=${HPDL_MAX_JOBS:-50} jobs done and the run is not complete; not resubmitting"
  fi
  case $chain:$(hpdl_job_system) in
    dependency:slurm)
      hpdl_job_log "submitting job $next of the chain after job $SLURM_JOB_ID"
      # shellcheck disable=SC2086  # HPDL_SUBMIT_ARGS is a list of options
      sbatch --dependency="afterany:$SLURM_JOB_ID" --export="ALL,HPDL_JOB_COUNT=$next" ${HPDL_SUBMIT_ARGS:-} "$script" ;;
    dependency:pbs)
      hpdl_job_log "submitting job $next of the chain after job $PBS_JOBID"
      # shellcheck disable=SC2086
      qsub -W depend="afterany:$PBS_JOBID" -V -v "HPDL_JOB_COUNT=$next" ${HPDL_SUBMIT_ARGS:-} "$script" ;;
    requeue:slurm)
      hpdl_job_log "requeueing job $SLURM_JOB_ID (run $next of the chain)"
      # A requeued job gets the environment it was submitted with, so the count cannot travel; HPDL_MAX_JOBS
      # is checked against SLURM_RESTART_COUNT instead.
      scontrol requeue "$SLURM_JOB_ID" ;;
    requeue:pbs)
      hpdl_job_log "rerunning job $PBS_JOBID (run $next of the chain)"
      qrerun "$PBS_JOBID" ;;
    none:* | *:none)
      hpdl_job_log "not resubmitting (HPDL_CHAIN=$chain, batch system $(hpdl_job_system)); continue with: $script" ;;
    *) hpdl_job_die "HPDL_CHAIN=$chain: expected dependency, requeue or none" ;;
  esac
}

# The whole training job: stage, train one chunk (resuming when the run has a
# checkpoint), then stop or chain the next job. $1: the script to resubmit.
hpdl_job_train() {
  local script=$1 run_dir=${HPDL_RUN_DIR:-} args=() sets=() step0 step1 stop=0 epochs rc kv store=
  HPDL_BIN=${HPDL_BIN:-hpdl}
  [[ -n $run_dir ]] || hpdl_job_die "set HPDL_RUN_DIR (the run directory on the shared file system)"
  [[ -n ${SLURM_RESTART_COUNT:-} ]] && HPDL_JOB_COUNT=$(( SLURM_RESTART_COUNT + 1 ))
  if hpdl_run_complete "$run_dir"; then
    hpdl_job_log "run $run_dir is complete ($run_dir/summary.json); nothing to do"
    return 0
  fi
  if [[ -e $run_dir/STOP ]]; then
    hpdl_job_log "$run_dir/STOP exists: not training, not resubmitting (remove it to go on)"
    return 0
  fi
  hpdl_job_launcher
  if hpdl_run_checkpoint "$run_dir" >/dev/null; then
    args=(train --resume "$run_dir")
    hpdl_job_log "job ${HPDL_JOB_COUNT:-1}: resuming $run_dir from $(hpdl_run_checkpoint "$run_dir")"
  else
    [[ -n ${HPDL_CONFIG:-} ]] || hpdl_job_die "$run_dir has no checkpoint: set HPDL_CONFIG (the training config) to start it"
    [[ -f $HPDL_CONFIG ]] || hpdl_job_die "HPDL_CONFIG=$HPDL_CONFIG: no such file"
    args=(train "$HPDL_CONFIG" --set "train.run_dir=$run_dir")
    hpdl_job_log "job ${HPDL_JOB_COUNT:-1}: starting $run_dir from $HPDL_CONFIG"
  fi
  # HPDL_EPOCHS_PER_JOB = K: this job ends after K more epochs (train.stop_after_epoch;
  # the lr schedule still spans train.epochs). Always passed: config.toml keeps the last value.
  if (( ${HPDL_EPOCHS_PER_JOB:-0} > 0 )); then
    stop=$(( $(hpdl_run_checkpoint_epoch "$run_dir") + HPDL_EPOCHS_PER_JOB ))
    epochs=$(hpdl_run_config_value "$run_dir" train epochs)
    [[ -n $epochs ]] && (( stop >= epochs )) && stop=0
  fi
  args+=(--set "train.stop_after_epoch=$stop")
  if [[ -n ${HPDL_STORE:-} ]]; then
    store=$(hpdl_job_stage) || exit 1
    args+=(--set "data.store=$store")
  fi
  read -r -a sets <<<"${HPDL_SET:-}"
  for kv in "${sets[@]}"; do args+=(--set "$kv"); done
  step0=$(hpdl_run_checkpoint_step "$run_dir")
  hpdl_job_run "${HPDL_LAUNCHER[@]}" "$HPDL_BIN" "${args[@]}"; rc=$?
  [[ -n $store && ${HPDL_KEEP_STAGED:-0} != 1 ]] && rm -rf "$store"
  if hpdl_run_complete "$run_dir"; then
    hpdl_job_log "run $run_dir is complete; the chain ends here"
    return 0
  fi
  if (( rc != 0 && HPDL_JOB_SIGNALLED == 0 )); then
    hpdl_job_die "training failed (exit status $rc); not resubmitting (fix it, then submit $script again)"
  fi
  step1=$(hpdl_run_checkpoint_step "$run_dir")
  (( step1 > step0 )) || hpdl_job_die "no new checkpoint in $run_dir (step $step0 before and after this job); not resubmitting"
  if [[ -e $run_dir/STOP ]]; then
    hpdl_job_log "$run_dir/STOP exists: checkpoint at step $step1, not resubmitting"
    return 0
  fi
  # HPDL_RESUBMIT_SIGNALS: the signals after which the chain goes on (default both; with
  # "USR1" alone, a TERM from scancel or qdel ends the chain after its checkpoint).
  if ((HPDL_JOB_SIGNALLED)) && [[ " ${HPDL_RESUBMIT_SIGNALS:-USR1 TERM} " != *" $HPDL_JOB_SIGNAL "* ]]; then
    hpdl_job_log "stopped by SIG$HPDL_JOB_SIGNAL: checkpoint at step $step1, not resubmitting" \
      "(HPDL_RESUBMIT_SIGNALS=${HPDL_RESUBMIT_SIGNALS:-})"
    return 0
  fi
  hpdl_job_log "checkpoint at step $step1, the run is not complete"
  hpdl_job_resubmit "$script"
}
