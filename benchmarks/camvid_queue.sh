#!/usr/bin/env bash
# Run the CamVid training jobs listed in a job file, two one-thread lanes side by side (2-core CPU).
# Each job line: NAME CONFIG SEED [key=value overrides...]; the run goes to runs/camvid/NAME and its log to
# runs/camvid/NAME.log. Lines starting with # are skipped. Summarise with benchmarks/summarize_camvid.py.
# Usage: bash benchmarks/camvid_queue.sh benchmarks/camvid_consistency.jobs [more.jobs ...]
# Exits non-zero when any job failed (each failure is named with its log).
set -uo pipefail
command -v sparseg > /dev/null || { echo "camvid_queue: no 'sparseg' command; install the project first" >&2; exit 127; }
export OMP_NUM_THREADS=1
mkdir -p runs/camvid
grep -hv -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$@" | xargs -P 2 -L 1 bash -c '
  name=$0 config=$1 seed=$2; shift 2
  log="runs/camvid/$name.log"
  if sparseg train "$config" --out "runs/camvid/$name" --overwrite --set seed="$seed" "$@" > "$log" 2>&1; then
    echo "$name: $(grep "val mIoU" "$log" | tail -n 1)"
  else
    echo "$name: FAILED, see $log"; exit 1
  fi'
