#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (TPU VM): every worker runs the same command, and jax.distributed.initialize()
# (md4_jax.train --multihost) finds the other workers from the TPU metadata.
#
#   launch/tpu_pod.sh [--sync] TPU_NAME ZONE -- --config experiments/owt_small.py --workdir /mnt/shared/owt_small
#
#   launch/tpu_pod.sh [--sync] --sweep TPU_NAME ZONE -- --config experiments/kjv_tiny.py --workdir /mnt/shared/ROOT
#
#   --sweep   run the experiment's sweep (md4_jax.sweep --multihost): its members one after another, each on the
#             whole slice, in ROOT/<member name>; then worker 0 writes ROOT/report.{md,csv,png}. Rerunning resumes.
#   --sync    first copy this checkout's committed files (git archive HEAD) to REPO_DIR on every worker and run
#             SETUP there (for example SETUP='pip install "jax[tpu]" -e .[data]').
#
# Environment: PROJECT (gcloud --project, default: gcloud's), REPO_DIR (the checkout on the workers, default
# md4_jax, relative to the home directory), PYTHON (default python3), SETUP (see --sync), GCLOUD (default gcloud).
# The workdir must be one directory that every worker sees (an NFS / Filestore mount or a gcsfuse bucket mounted
# at the same path): each worker writes its shards of every checkpoint there. Run this from tmux or screen: the
# training lives as long as the ssh sessions. SIGTERM to any worker (a maintenance event) makes all of them save
# a checkpoint at the same step and exit; rerunning the same command resumes.
set -euo pipefail

usage() {
  echo "usage: $0 [--sync] [--sweep] TPU_NAME ZONE -- TRAIN_ARGS (e.g. --config experiments/owt_small.py --workdir DIR)" >&2
  exit 2
}

sync=0
sweep=0
while [[ "${1:-}" == "--sync" || "${1:-}" == "--sweep" ]]; do
  if [[ "$1" == "--sync" ]]; then sync=1; else sweep=1; fi
  shift
done
[[ $# -ge 3 && "$3" == "--" ]] || usage
tpu="$1"
zone="$2"
shift 3
[[ $# -gt 0 ]] || usage

gcloud_bin="${GCLOUD:-gcloud}"
repo_dir="${REPO_DIR:-md4_jax}"
python_bin="${PYTHON:-python3}"
where=(--zone "$zone")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project "$PROJECT")
fi

on_workers() {  # on_workers WORKERS COMMAND: the shell command on those workers ('all' or an index), output here
  "$gcloud_bin" compute tpus tpu-vm ssh "$tpu" "${where[@]}" --worker="$1" --command="$2"
}

if [[ "$sync" == 1 ]]; then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  archive="$(mktemp -d)/md4_jax_src.tar.gz"
  git -C "$root" archive --format=tar.gz -o "$archive" HEAD
  "$gcloud_bin" compute tpus tpu-vm scp "$archive" "$tpu:md4_jax_src.tar.gz" "${where[@]}" --worker=all
  setup="mkdir -p $(printf '%q' "$repo_dir") && tar -xzf md4_jax_src.tar.gz -C $(printf '%q' "$repo_dir")"
  if [[ -n "${SETUP:-}" ]]; then
    setup+=" && cd $(printf '%q' "$repo_dir") && ${SETUP}"
  fi
  on_workers all "$setup"
fi

run_on() {  # run_on WORKERS MODULE ARGS...: python -m MODULE ARGS in the checkout on those workers
  local workers="$1" module="$2"
  shift 2
  on_workers "$workers" "cd $(printf '%q' "$repo_dir") && $(printf '%q' "$python_bin") -m $module $(printf '%q ' "$@")"
}

if [[ "$sweep" == 1 ]]; then
  status=0
  run_on all md4_jax.sweep --multihost --no_report "$@" || status=$?
  run_on 0 md4_jax.sweep --report_only "$@"
  exit "$status"
fi
run_on all md4_jax.train --multihost "$@"
