#!/usr/bin/env bash
# Every CUDA path of sparseg in one command, for a GPU that is lent for minutes (issue #16):
#
#   bash benchmarks/gpu_check.sh OUTDIR [--quick] [--cpu-dry-run]
#
# On one GPU (target: under 8 minutes; --quick: fewer iterations and recipes) it
#   - trains every method (supervised, selftrain, dgcl, fixmatch, unimatch, unimatch_v2 with DINOv2 + DPT,
#     agmm, fixmatch+depmatch with precomputed and with online depth) for a few dozen iterations on
#     generated data, with bf16 and with fp16 (grad scaler), under `torchrun --nproc_per_node=1` (NCCL
#     process group, DDP, SyncBatchNorm, channels_last), plus supervised with torch.compile (bf16);
#   - stops a run at its checkpoint and resumes it in a fresh process, against an uninterrupted run;
#   - runs benchmarks/dgcl_density.py on CUDA in fp32 and in TF32, and benchmarks/throughput.py on the
#     VOC recipes at their published crops;
# and writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (pass/fail, peak GPU memory, it/s), with each
# step's log in OUTDIR/logs/. Every step has its own time limit and a failing step does not stop the others;
# the exit code is 1 if any step failed. --cpu-dry-run runs the same steps on the CPU with tiny sizes
# (gloo instead of NCCL, bf16 only, fp16 and torch.compile reported as skipped) in well under 3 minutes;
# tests/test_gpu_check.py runs it. Needs the project installed with its test extra (transformers).
set -u

usage() { echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--quick] [--cpu-dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
shift
QUICK=0
DRY=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --cpu-dry-run) DRY=1 ;;
    *) usage ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT/steps" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
WORK="$OUT/work"
rm -f "$OUT"/steps/* "$OUT"/logs/* "$OUT"/gpu_check.json "$OUT"/gpu_check.md
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1)

if [ $DRY = 1 ]; then
  MODE=cpu
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  # generous: the dry run checks the script, not speed, and may share a busy CPU (data: transformers' import)
  LIMIT_DATA=240 LIMIT_TRAIN=240 LIMIT_RESUME=180 LIMIT_DENSITY=120 LIMIT_THROUGHPUT=180
  DENSITY_ARGS=(--device cpu --m 400 --n 400 --dim 32 --classes 2 --update 40 --repeats 1)
  THROUGHPUT_ARGS=(--configs configs/voc/supervised.yaml configs/voc/fixmatch.yaml --batch 2 --steps 1 --warmup 1
                   --device cpu --image-size 40 --set data.crop_size=32 data.workers=0 model.encoder=resnet18
                   model.stem=plain model.width=8 model.decoder_channels=16)
else
  MODE=gpu
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA device visible to $PY (use --cpu-dry-run to check the script on a CPU)" >&2
    exit 2
  fi
  export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the resume comparison
  LIMIT_DATA=120 LIMIT_TRAIN=300 LIMIT_RESUME=150 LIMIT_DENSITY=90 LIMIT_THROUGHPUT=180
  DENSITY_ARGS=(--device cuda --repeats 3)
  if [ $QUICK = 1 ]; then
    THROUGHPUT_ARGS=(--configs configs/voc/supervised.yaml configs/voc/fixmatch.yaml configs/voc/unimatch_v2.yaml
                     --batch 4 --steps 3 --warmup 2 --device cuda)
  else
    THROUGHPUT_ARGS=(--configs configs/voc/{supervised,selftrain,dgcl,fixmatch,unimatch,unimatch_v2,agmm_points}.yaml
                     --batch 4 --steps 3 --warmup 1 --device cuda)
  fi
fi

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUTDIR/logs/NAME.log, status to steps/NAME.status.json
step() {
  local name=$1 limit=$2
  shift 2
  local started ended rc result
  started=$(date +%s%N)
  echo "gpu_check: $name (limit ${limit}s)"
  timeout --kill-after=15 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  ended=$(( ($(date +%s%N) - started) / 100000000 ))  # tenths of a second
  case $rc in
    0) result=pass ;;
    124|137) result=timeout ;;
    *) result=fail ;;
  esac
  printf '{"step": "%s", "result": "%s", "exit_code": %d, "seconds": %d.%d, "limit": %d, "log": "logs/%s.log"}\n' \
    "$name" "$result" "$rc" $((ended / 10)) $((ended % 10)) "$limit" "$name" >"$OUT/steps/$name.status.json"
  echo "gpu_check: $name $result"
}

# skip NAME REASON
skip() {
  printf '{"step": "%s", "result": "skipped", "exit_code": 0, "seconds": 0, "limit": 0, "note": "%s"}\n' \
    "$1" "$2" >"$OUT/steps/$1.status.json"
  echo "gpu_check: $1 skipped ($2)"
}

cd "$HERE/.."
data_args=("$WORK" --mode "$MODE")
[ $QUICK = 1 ] && data_args+=(--quick)
step data "$LIMIT_DATA" "$PY" benchmarks/gpu_check.py data "${data_args[@]}"
step train-bf16 "$LIMIT_TRAIN" "${TORCHRUN[@]}" benchmarks/gpu_check.py train "$WORK" --amp bf16 \
  --record "$OUT/steps/train-bf16.json"
if [ $MODE = gpu ]; then
  step train-fp16 "$LIMIT_TRAIN" "${TORCHRUN[@]}" benchmarks/gpu_check.py train "$WORK" --amp fp16 \
    --record "$OUT/steps/train-fp16.json"
else
  skip train-fp16 "skipped-on-CPU: fp16 autocast with a grad scaler needs CUDA"
fi
step resume "$LIMIT_RESUME" bash -c '"$@" --phase start --record "$0" && "$@" --phase finish --record "$0"' \
  "$OUT/steps/resume.json" "${TORCHRUN[@]}" benchmarks/gpu_check.py resume "$WORK"
step density-fp32 "$LIMIT_DENSITY" "$PY" benchmarks/dgcl_density.py "${DENSITY_ARGS[@]}" --precision fp32 \
  --json "$OUT/steps/density-fp32.json"
step density-tf32 "$LIMIT_DENSITY" "$PY" benchmarks/dgcl_density.py "${DENSITY_ARGS[@]}" --precision tf32 \
  --json "$OUT/steps/density-tf32.json"
step throughput "$LIMIT_THROUGHPUT" "$PY" benchmarks/throughput.py "${THROUGHPUT_ARGS[@]}" \
  --json "$OUT/steps/throughput.json"
"$PY" benchmarks/gpu_check.py report "$OUT" >"$OUT/logs/report.log" 2>&1
rc=$?
cat "$OUT/gpu_check.md" 2>/dev/null || cat "$OUT/logs/report.log"
exit $rc
