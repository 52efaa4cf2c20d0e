#!/usr/bin/env bash
# Train a default config once, timed, and keep its per-epoch validation history; for machines
# where a run's folders are lost afterwards (a lent GPU). Prints the wall time and the history.
#   scripts/timed_train.sh cls|seg DATA_ROOT OUT_DIR [extra train.py args]
# Writes OUT_DIR/<task>_train.log and OUT_DIR/<task>_history.json (scripts/tb_history.py).
set -uo pipefail
task=$1 root=$2 out=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=$(mktemp -d)  # a fresh root: the run is version_0, whatever ran before on this machine
tags=(val/acc val/acc_macro val/loss)
[ "$task" = seg ] && tags=(val/iou_global val/dice_global val/iou_per_image val/loss)
mkdir -p "$out"
start=$(date +%s.%N)
python3 "$repo/train.py" --config "$repo/configs/$task.yaml" --data.root "$root" --trainer.enable_progress_bar false \
    --trainer.default_root_dir "$runs" "$@" > "$out/${task}_train.log" 2>&1
status=$?
echo "$task: exit $status after $(python3 -c "import time; print(round(time.time() - $start))") s (command start to end)"
python3 "$repo/scripts/tb_history.py" "$runs/$task/version_0" --start "$start" "${tags[@]}" > "$out/${task}_history.json"
tail -c 400 "$out/${task}_history.json"
echo
