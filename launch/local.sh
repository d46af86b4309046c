#!/usr/bin/env bash
# Train on this machine, on all its devices, resuming if WORKDIR holds a run.
#   launch/local.sh [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/local.sh configs/gan.py:smoke runs/smoke --config.train.num_steps=20
# --dry-run prints the command instead of running it.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 2 ]]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
cmd=(python -m mmgen_jax.main "--config=${config}" "--workdir=${workdir}" "$@")
if (( dry_run )); then
  printf '%q ' "${cmd[@]}"
  printf '\n'
else
  cd "$(dirname "$0")/.."
  exec "${cmd[@]}"
fi
