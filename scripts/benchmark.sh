#!/usr/bin/env bash
# Train a config on real data from scratch, then evaluate its best checkpoint; the
# numbers in BENCHMARKS.md come from this script's output.
#   scripts/benchmark.sh cls ../shared/data/brain-tumor-classification-mri [extra train.py args]
set -euo pipefail
task=$1 root=$2
shift 2
rm -rf "runs/$task"
start=$(date +%s)
python train.py --config "configs/$task.yaml" --data.root "$root" --trainer.enable_progress_bar false "$@"
echo "train wall time: $(($(date +%s) - start)) s on $(nproc) CPU cores$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | sed 's/^/ + /')"
python evaluate.py --config "configs/$task.yaml" --data.root "$root" --ckpt_path "runs/$task/checkpoints/best.ckpt" "$@"
