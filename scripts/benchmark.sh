#!/usr/bin/env bash
# Train a config on real data from scratch, then evaluate its best checkpoint; the
# numbers in BENCHMARKS.md come from this script's output.
#   [RUN_NAME=name] scripts/benchmark.sh cls|seg|cls_fast|seg_fast DATA_ROOT [extra train.py args]
# Runs in benchmarks/<RUN_NAME or task>/ (runs/ for checkpoints and TensorBoard, report/).
set -euo pipefail
task=$1
root=$(realpath "$2")
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
work="$repo/benchmarks/${RUN_NAME:-$task}"
rm -rf "$work" && mkdir -p "$work" && cd "$work"
echo "$(date -u +%F) $(nproc) CPU cores$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | sed 's/^/, /')"
start=$(date +%s)
python "$repo/train.py" --config "$repo/configs/$task.yaml" --data.root "$root" --trainer.enable_progress_bar false "$@"
echo "train wall time: $(($(date +%s) - start)) s"
python "$repo/evaluate.py" --ckpt_path "runs/$task/version_0" --output_dir report
