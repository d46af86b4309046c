#!/usr/bin/env bash
# Train on every worker of an existing Cloud TPU VM slice (this script creates nothing).
#   launch/tpu_vm.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b configs/gan.py /mnt/shared/runs/gan
# --dry-run prints the gcloud command instead of running it.
# Each worker needs this repository at $REMOTE_DIR (default: mmgen_jax, relative to the
# home directory) with its dependencies installed for $PYTHON (default: python3), and
# WORKDIR on a filesystem all workers share (Filestore/NFS or a gcsfuse mount). The same
# command runs on all workers at once; --multihost=on makes each initialise
# jax.distributed, which finds its peers through the TPU metadata server.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 4 ]]; then
  sed -n '3,4p' "$0" >&2
  exit 2
fi
name=$1
zone=$2
config=$3
workdir=$4
shift 4
train=("${PYTHON:-python3}" -m mmgen_jax.main --multihost=on "--config=${config}"
  "--workdir=${workdir}" "$@")
remote="cd $(printf '%q' "${REMOTE_DIR:-mmgen_jax}") && $(printf '%q ' "${train[@]}")"
cmd=(gcloud compute tpus tpu-vm ssh "${name}" "--zone=${zone}" --worker=all
  "--command=${remote% }")
if (( dry_run )); then
  printf '%q ' "${cmd[@]}"
  printf '\n'
else
  exec "${cmd[@]}"
fi
