#!/usr/bin/env bash
# A training recipe on any CUDA machine with the project installed (pip install -e .), timed and evaluated:
#   scripts/gpu_recipe.sh CONFIG OUT [train.py arguments, e.g. --data.root DATA --data.negatives '[...]']
# 1. a smoke step: one epoch of 4 batches (2 minutes at most), which fails early on a broken environment;
# 2. the recipe: train.py --config CONFIG with your arguments, on the GPU in bf16 (the trainer's defaults), its
#    run folder OUT/runs/<name>/version_0; with TRAIN_SECONDS set, stopped by Ctrl-C at that limit with a
#    checkpoint, and `RESUME=1 scripts/gpu_recipe.sh ...` (the same arguments) goes on from it;
# 3. what it gives: OUT/train.log, OUT/history.json (the validation curve, seconds from the start) and
#    evaluate.py's report on its best checkpoint, OUT/report/.
# Examples: the segmenter on every outlined source (issue 45), the classifier likewise:
#   scripts/gpu_recipe.sh configs/seg_sources.yaml out/seg --data.root "[$S/brain-tumor-figshare, \
#       $S/lgg-mri-segmentation/kaggle_3m, $S/br35h/Br35H-Mask-RCNN]" --data.negatives "[$S/brain-tumor-mri-dataset]" \
#       --model.init_args.encoder_weights $S/weights/mobilenet_v2_imagenet_features_tv.pth
#   scripts/gpu_recipe.sh configs/cls_sources.yaml out/cls --data.root "[...every classification source...]"
# scripts/device_outlines.sh wraps the outline recipe for a lent machine that holds 64 MiB of working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: $0 CONFIG OUT [train.py arguments]} out=${2:?usage: $0 CONFIG OUT [train.py arguments]}
shift 2
mkdir -p "$out"
common=(--config "$config" --trainer.enable_progress_bar false "$@")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/machine.txt" ||
    echo "no GPU found: this runs on the CPU" | tee "$out/machine.txt"

if [ -z "${RESUME:-}" ]; then
    timeout 120 python train.py "${common[@]}" --trainer.max_epochs 1 --trainer.limit_train_batches 4 \
        --trainer.limit_val_batches 2 --trainer.default_root_dir "$out/smoke" > "$out/smoke.log" 2>&1 ||
        { tail -40 "$out/smoke.log"; exit 1; }
    echo "smoke: ok"
fi

name=$(basename "$config" .yaml)
resume=()
[ -n "${RESUME:-}" ] && resume=(--ckpt_path "$out/runs/$name/version_0")
start=$(date +%s.%N)
[ -f "$out/started" ] || echo "$start" > "$out/started"   # the history's time zero: the first leg's start
limit=()
[ -n "${TRAIN_SECONDS:-}" ] && limit=(timeout -s INT -k 60 "$TRAIN_SECONDS")
"${limit[@]}" python train.py "${common[@]}" --trainer.logger.init_args.name "$name" \
    --trainer.default_root_dir "$out/runs" "${resume[@]}" >> "$out/train.log" 2>&1 || echo "train: exit $? (124: stopped at the limit)"
echo "train: $(python -c "import time; print(round(time.time() - $start))") s"
tags=(val/loss val/acc)
grep -q SegmentationModule "$config" && tags=(val/loss val/dice_per_tumor_image val/iou_global)
python scripts/tb_history.py "$out/runs/$name/version_0" --start "$(cat "$out/started")" "${tags[@]}" > "$out/history.json"
python evaluate.py --ckpt_path "$out/runs/$name/version_0" --output_dir "$out/report" > "$out/report.log" 2>&1 ||
    echo "evaluate: exit $?"
tail -25 "$out/report.log"
