#!/usr/bin/env bash
# Supervised CamVid baselines on CPU (README "Measured results"): the 1/8 split and all 367 images,
# same model, schedule and budget, run side by side with one thread each.
# Usage: bash benchmarks/camvid_supervised.sh [SEED]
set -euo pipefail
seed=${1:-0}
export OMP_NUM_THREADS=1
sparseg train configs/camvid/supervised.yaml --out runs/camvid/supervised_1_8_s$seed --overwrite \
  --set seed=$seed data.train_list=splits/1_8/labeled.txt &
sparseg train configs/camvid/supervised.yaml --out runs/camvid/supervised_full_s$seed --overwrite \
  --set seed=$seed &
wait
for run in supervised_1_8_s$seed supervised_full_s$seed; do
  sparseg eval runs/camvid/$run/last.pt --json runs/camvid/$run/eval.json | tail -1
done
