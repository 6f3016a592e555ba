#!/usr/bin/env bash
# Semi-supervised CamVid comparison on CPU (docs/benchmarks.md): supervised, selftrain and dgcl on the
# fixed 1/8 split, same model, 800 iterations, seeds 0 and 1, in two one-thread lanes side by side.
# Supervised seed 0 comes from benchmarks/camvid_supervised.sh. Usage: bash benchmarks/camvid_semi.sh
set -uo pipefail
export OMP_NUM_THREADS=1
run() {  # run NAME CONFIG SEED [overrides...]
  local name=$1 config=$2 seed=$3; shift 3
  sparseg train "$config" --out "runs/camvid/${name}_1_8_s$seed" --overwrite --set seed=$seed "$@" \
    > "runs/camvid/${name}_1_8_s$seed.log" 2>&1
}
mkdir -p runs/camvid
( run dgcl configs/camvid/dgcl.yaml 0; run selftrain configs/camvid/selftrain.yaml 1 ) &
( run selftrain configs/camvid/selftrain.yaml 0; run dgcl configs/camvid/dgcl.yaml 1;
  run supervised configs/camvid/supervised.yaml 1 data.train_list=splits/1_8/labeled.txt ) &
wait
grep -H "mIoU" runs/camvid/*_1_8_s*.log | grep "val mIoU" | tail -n 20
