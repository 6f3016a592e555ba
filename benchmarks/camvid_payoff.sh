#!/usr/bin/env bash
# Does the unlabeled data pay? One seed of the CamVid 1/8 comparison of docs/methods/alignment.md, from the
# shared CamVid data only:
#   OUT/supervised            supervised on the 46 labeled images (configs/camvid/supervised.yaml, 800 iterations)
#   OUT/supervised_continued  the same model trained 800 more iterations on the same labels
#   OUT/semi                  the recommended semi-supervised recipe (configs/camvid/selftrain_aligned.yaml)
#                             started from OUT/supervised/last.pt, 800 iterations
# Both arms start from the same checkpoint and run the same iterations with the same schedule; the seed sets the
# data order and dropout of all three. Each run's last.pt is scored on val (OUT/<arm>/val.json) and on the
# held-out training images of splits/1_8/unlabeled.txt (321) with their masks (OUT/<arm>/heldout.json); for the
# semi arm that is the teacher, the model `sparseg eval` scores by default. OUT/<arm>/labeled.json scores it on
# its own labeled images (splits/1_8/labeled.txt): how well the model fits what it was trained on.
#
# Usage: bash benchmarks/camvid_payoff.sh SEED OUT [STAGE]
#   STAGE: all (default: supervised, then the two arms side by side, then scores), supervised, continued, semi,
#   score. SEMI_CONFIG and SEMI_SET (extra --set items) change the semi arm, SEMI_NAME its folder, e.g.
#   SEMI_NAME=selftrain_plain SEMI_SET="method.pseudo_label.align=none" bash benchmarks/camvid_payoff.sh 0 OUT semi
#   ITERS lengthens both arms alike (train.iters, the same poly schedule stretched) and names their folders
#   OUT/supervised_continued_ITERS and OUT/semi_ITERS (SEMI_NAME still wins for the semi arm).
#   SPLIT (default 1_8; 1_16 or 1_4) picks splits/SPLIT/labeled.txt and unlabeled.txt for every arm and the
#   held-out score; give each split its own OUT, e.g. SPLIT=1_4 bash benchmarks/camvid_payoff.sh 0 runs/payoff_1_4/s0
# One thread per process (two side by side on a 2-core CPU); CAMVID moves the data root.
set -euo pipefail
seed=${1:?usage: camvid_payoff.sh SEED OUT [STAGE]}
out=${2:?usage: camvid_payoff.sh SEED OUT [STAGE]}
stage=${3:-all}
root=${CAMVID:-../shared/datasets/camvid}
semi_config=${SEMI_CONFIG:-configs/camvid/selftrain_aligned.yaml}
iters=${ITERS:-}
semi_name=${SEMI_NAME:-semi${iters:+_$iters}}
continued_name=supervised_continued${iters:+_$iters}
schedule=${iters:+train.iters=$iters}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
split=${SPLIT:-1_8}
[ -f "$root/splits/$split/labeled.txt" ] || { echo "camvid_payoff: SPLIT=$split: $root/splits/$split/labeled.txt not found" >&2; exit 2; }
labeled="data.train_list=splits/$split/labeled.txt"
start="$out/supervised/last.pt"

supervised() {
  sparseg train configs/camvid/supervised.yaml --out "$out/supervised" --overwrite \
    --set seed="$seed" data.root="$root" "$labeled"
}
need_start() {
  [ -f "$start" ] || { echo "camvid_payoff: $start not found: run the supervised stage first" >&2; exit 2; }
}
continued() {
  need_start
  # shellcheck disable=SC2086  # $schedule is empty or one --set item
  sparseg train configs/camvid/supervised.yaml --out "$out/$continued_name" --overwrite \
    --set seed="$seed" data.root="$root" "$labeled" model.pretrained="$start" $schedule
}
semi() {
  need_start
  # shellcheck disable=SC2086  # SEMI_SET is a list of --set items
  sparseg train "$semi_config" --out "$out/$semi_name" --overwrite \
    --set seed="$seed" data.root="$root" data.labeled_list="splits/$split/labeled.txt" \
    data.unlabeled_list="splits/$split/unlabeled.txt" model.pretrained="$start" $schedule ${SEMI_SET:-}
}
score() {
  for run in "$out"/*/; do
    run=${run%/}
    [ -f "$run/last.pt" ] || continue
    if [ -f "$run/train.lock" ]; then  # a run still training: its last.pt is an intermediate checkpoint
      echo "$run: not scored, $run/train.lock says it is training (delete the lock if no training runs there)"
      continue
    fi
    if ! { [ "$run/val.json" -nt "$run/last.pt" ] && [ "$run/heldout.json" -nt "$run/last.pt" ]; }; then
      sparseg eval "$run/last.pt" --set data.root="$root" --json "$run/val.json" > /dev/null
      sparseg eval "$run/last.pt" --set data.root="$root" data.val_list="splits/$split/unlabeled.txt" \
        --json "$run/heldout.json" > /dev/null
    fi  # scores newer than the checkpoint are kept
    if ! [ "$run/labeled.json" -nt "$run/last.pt" ]; then
      sparseg eval "$run/last.pt" --set data.root="$root" data.val_list="splits/$split/labeled.txt" \
        --json "$run/labeled.json" > /dev/null
    fi
    python - "$run" <<'PY'
import json, sys
run = sys.argv[1]
val, held, labeled = (json.load(open(f"{run}/{name}.json"))["miou"] for name in ("val", "heldout", "labeled"))
print(f"{run}: val mIoU {val:.2f}, held-out mIoU {held:.2f}, labeled-image mIoU {labeled:.2f}")
PY
  done
}

case $stage in
  all) supervised; continued & arm1=$!; semi & arm2=$!; wait $arm1; wait $arm2; score ;;
  supervised|continued|semi|score) "$stage" ;;
  *) echo "camvid_payoff: unknown stage '$stage' (all, supervised, continued, semi, score)" >&2; exit 2 ;;
esac
