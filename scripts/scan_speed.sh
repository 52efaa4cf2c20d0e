#!/usr/bin/env bash
# Time predict.py on scans: one scan alone, then two scans one after the other in one process, then the two in
# two processes at once (each with half the cores), so the scaling over 2 processes is measured, not guessed.
#   scripts/scan_speed.sh SCAN [OUT_DIR] [predict.py options, e.g. --tta none]
set -euo pipefail
scan=$(realpath "${1:?usage: scripts/scan_speed.sh SCAN [OUT_DIR] [predict.py options]}")
out=${2:-benchmarks/scan_speed}
shift $(($# >= 2 ? 2 : 1))
mkdir -p "$out"
twin="$out/twin_$(basename "$scan")" # the same scan under a second name: a second scan to predict
ln -sfn "$scan" "$twin"
half=$(($(nproc) > 1 ? $(nproc) / 2 : 1))
now() { python3 -c "import time; print(time.time())"; }
since() { python3 -c "print(round($(now) - $1, 1))"; }

start=$(now)
python predict.py "$scan" --output_dir "$out/one" "$@" >/dev/null 2>&1
echo "one scan:                 $(since "$start") s"
start=$(now)
python predict.py "$scan" "$twin" --output_dir "$out/sequential" "$@" >/dev/null 2>&1
echo "two scans, one process:   $(since "$start") s"
start=$(now)
OMP_NUM_THREADS=$half python predict.py "$scan" --output_dir "$out/first" "$@" >/dev/null 2>&1 &
OMP_NUM_THREADS=$half python predict.py "$twin" --output_dir "$out/second" "$@" >/dev/null 2>&1 &
wait
echo "two scans, two processes: $(since "$start") s ($half threads each)"
