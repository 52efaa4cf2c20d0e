#!/usr/bin/env bash
# On any CUDA machine with the project installed, scripts/gpu_recipe.sh runs a recipe (smoke step, training,
# history, evaluation). This script packs the ResNet50-UNet default (configs/seg.yaml, 256 px) on the tumour
# outlines and healthy slices for a machine that takes little: a lent GPU with 15 minutes in all, 10 a command,
# 64 MiB of working tree and Python 3.12 with its own torch, lightning, timm and torchmetrics. Four verbs:
#   scripts/device_outlines.sh pack [DATA]   here: the data into .gpu/ (figshare as is, the no-tumour folders
#                                            at 256 px, gray, JPEG 80), gzipped into .gpu.tar (the device counts
#                                            disk blocks: the 6800 small files take 66 MB of them, the tar 46),
#                                            and the packages the device lacks, as wheels in .whl/ (all three
#                                            ignored through .git/info/exclude)
#   scripts/device_outlines.sh check         there: install, the CUDA tests, a smoke run, evaluate.py on it (2 min)
#   scripts/device_outlines.sh run           there: install, a smoke run, the default (stopped by Ctrl-C at
#                                            TRAIN_SECONDS, 330 by default, with a checkpoint), evaluated (7 min)
#   scripts/device_outlines.sh resume        there, on the machine `run` left warm (it is given back 30 s after
#                                            a call returns): that run resumed to its last epoch, evaluated
# The default's 40 epochs (about 560 s on an H200) do not fit one command's 600 s with the install and the
# evaluation: `TRAIN_SECONDS=450 ... run` (timeout_s=580), then `resume` at once (timeout_s=280): about 850 s
# of the device's 900 with the machine's start. `train` and `resume` have run on CPU on a 12-slice folder (two
# legs, one history), not yet on a device.
# The tracked models/*.safetensors fill 60 of the 64 MiB, so move them out of the tree for the calls:
#   mv models /tmp/models_aside   # then run(carry=[".gpu.tar", ".whl"], command="bash scripts/device_outlines.sh
#   check", timeout_s=290), the same with run and timeout_s=560, then: mv /tmp/models_aside models
# Each call's machine start takes about a minute of the 15. What comes back under $OUT: the logs, the validation
# history (scripts/tb_history.py) and evaluate.py's report.
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
    local data=${1:-../shared/data}
    local ignored
    for ignored in /.gpu/ /.gpu.tar /.whl/; do
        grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
    done
    rm -rf .gpu .gpu.tar .whl
    python scripts/shrink_dataset.py "$data/brain-tumor-figshare" .gpu/brain-tumor-figshare --max_side 256
    for folder in brain-tumor-classification-mri/Training/no_tumor brain-tumor-mri-dataset/Training/notumor; do
        python scripts/shrink_dataset.py "$data/$folder" ".gpu/$folder" \
            --max_side 256 --quality 80 --grayscale   # healthy slices: JPEG at 80 fits the 64 MiB
    done
    # the project's requirements (pyproject.toml) and their own that the device's image lacks (KINDS.md's list),
    # at the versions of this environment, which the tests ran with; not pydicom, which only DICOM input imports
    local names=(jsonargparse docstring-parser typeshed-client segmentation-models-pytorch albumentations albucore
        stringzilla simsimd pydantic pydantic-core annotated-types typing-inspection pycocotools imagehash pywavelets
        monai)
    local pattern pins
    pattern=$(IFS='|'; echo "${names[*]}" | sed 's/-/[-_]/g')
    mapfile -t pins < <(python -m pip freeze | grep -iE "^($pattern)==")
    if [ "${#pins[@]}" -ne "${#names[@]}" ]; then
        echo "pack: ${#pins[@]} of the ${#names[@]} packages are installed here (${pins[*]}): pip install -e . first" >&2
        exit 1
    fi
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        "${pins[@]}"
    tar -czf .gpu.tar .gpu   # gzip squeezes the 6800 headers and their padding: 46 MB against 53
    du -sh .gpu.tar .whl
    local tracked packed   # bytes on disk, as the device counts them
    tracked=$(git ls-files -z | grep -zv '^models/' | du -c --block-size=1 --files0-from=- | tail -1 | cut -f1)
    packed=$(du -s --block-size=1 .gpu.tar .whl | awk '{s += $1} END {print s}')
    echo "working tree with models/ moved out: $(((tracked + packed) / 1048576)) MiB of 64"
}

install() {   # sets `out` and `data` for the steps after it
    out=${OUT:-/tmp/device_out}
    mkdir -p "$out"
    [ -d .gpu ] || tar -xf .gpu.tar
    [ -d /tmp/site ] ||   # a warm machine (`resume`) has them from the call before
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
    python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$out/machine.txt"
    data=(--data.root .gpu/brain-tumor-figshare
        --data.negatives "[.gpu/brain-tumor-classification-mri, .gpu/brain-tumor-mri-dataset]"
        --trainer.enable_progress_bar false --data.num_workers 14)   # augmentation on the CPUs sets the pace
}

smoke() {
    timeout 120 python3 train.py --config configs/seg.yaml "${data[@]}" --trainer.max_epochs 1 \
        --trainer.limit_train_batches 4 --trainer.limit_val_batches 2 --trainer.default_root_dir /tmp/smoke \
        > "$out/smoke.log" 2>&1 || { tail -40 "$out/smoke.log"; exit 1; }
    echo "smoke: ok"
}

evaluate() {   # the run folder, then a name for the report
    timeout 150 python3 evaluate.py --ckpt_path "$1" --output_dir "$out/$2" > "$out/$2.log" 2>&1 ||
        echo "evaluate: exit $?"
    tail -25 "$out/$2.log"
}

train() {   # the log's name, then train.py's extra arguments; stopped by Ctrl-C (a checkpoint kept) after TRAIN_SECONDS
    local seconds=${TRAIN_SECONDS:-330} start log=$1
    shift
    start=$(date +%s.%N)
    mkdir -p /tmp/runs
    [ -f /tmp/runs/started ] || echo "$start" > /tmp/runs/started   # the history's time zero: the first leg's start
    timeout -s INT -k 60 "$seconds" python3 train.py --config configs/seg.yaml "${data[@]}" \
        --trainer.default_root_dir /tmp/runs "$@" > "$out/$log.log" 2>&1 || echo "$log: exit $? (124: stopped at ${seconds} s)"
    echo "$log: $(python3 -c "import time; print(round(time.time() - $start))") s"
    python3 scripts/tb_history.py /tmp/runs/seg/version_0 --start "$(cat /tmp/runs/started)" \
        val/dice_per_tumor_image val/iou_global val/loss > "$out/history.json" || true
    tail -c 600 "$out/history.json"
    evaluate /tmp/runs/seg/version_0 report
}

run() {
    install
    smoke
    train train
}

resume() {
    [ -d /tmp/runs/seg/version_0 ] || { echo "resume: no run in /tmp/runs on this machine (it was not warm)" >&2; exit 1; }
    install
    TRAIN_SECONDS=${TRAIN_SECONDS:-500} train resume --ckpt_path /tmp/runs/seg/version_0
}

check() {   # what runs on a GPU only: the CUDA tests, then evaluate.py on the smoke run's checkpoint
    install
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_evaluation.py -k gpu 2>&1 | tee "$out/pytest.log"
    smoke
    evaluate /tmp/smoke/seg/version_0 smoke_report
}

case ${1:-} in
    pack) shift; pack "$@" ;;
    run) run ;;
    resume) resume ;;
    check) check ;;
    *) echo "usage: $0 pack [DATA] | run | resume | check" >&2; exit 2 ;;
esac
