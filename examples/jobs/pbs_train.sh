#!/bin/bash
# PBS Pro / Torque job: one chunk of an hpdl training run, then the next job of
# the chain until RUN_DIR/summary.json says the run is complete (docs/jobs.md).
#   qsub -v HPDL_CONFIG=$PWD/examples/fashion_mnist/resnet20.toml,HPDL_RUN_DIR=$PWD/runs/r20 examples/jobs/pbs_train.sh
# PBS sends SIGTERM at the walltime (then SIGKILL after its kill_delay); set
# HPDL_STOP_AFTER (seconds, e.g. the walltime less 5 minutes) to stop earlier.
#PBS -N hpdl-train
#PBS -l select=2:ncpus=32:mpiprocs=4
#PBS -l walltime=02:00:00
#PBS -j oe

cd "${PBS_O_WORKDIR:-.}" || exit 1
jobs_dir=${HPDL_JOBS_DIR:-$(dirname "$0")}
[[ -f $jobs_dir/hpdl_job.sh ]] || jobs_dir=${PBS_O_WORKDIR:-.}/examples/jobs
# shellcheck source=examples/jobs/hpdl_job.sh
source "$jobs_dir/hpdl_job.sh" || exit 1

hpdl_job_train "${HPDL_JOB_SCRIPT:-$0}"
