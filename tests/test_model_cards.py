"""The bundled models are what their cards say: file sizes, and validation numbers recomputed from
the bundled files on the real data in ../shared (skipped, with a message, where it is absent)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO, run_script

MODELS = REPO / "models"
SHARED_DATA = REPO.parent / "shared" / "data"
# Evaluation runs in the fastest precision of the machine (bf16 here, fp32 where the CPU lacks it),
# which can flip an image or two: the cards' numbers must hold to this.
TOLERANCE = 0.005
THREE_DATASETS = ["brain-tumor-classification-mri", "brain-tumor-mri-dataset", "brain-tumor-figshare"]
# card -> (data under ../shared/data, extra evaluate.py arguments, card row, metrics.json key, the data whose
# images the row pools: None for all)
CARDS = {
    "classifier": (  # its own validation split of every source, grouped by copies and patients
        [*THREE_DATASETS, "lgg-mri-segmentation/kaggle_3m", "br35h/Br35H-Mask-RCNN"],
        ["--own_split"],
        "accuracy, the three datasets' images",
        "accuracy",
        THREE_DATASETS,
    ),
    "segmenter": (  # its own validation split of every outlined source, grouped by patient, and healthy slices
        ["brain-tumor-figshare", "lgg-mri-segmentation/kaggle_3m", "br35h/Br35H-Mask-RCNN"],
        ["--own_split", "--data_negatives", "{data}/brain-tumor-classification-mri", "{data}/brain-tumor-mri-dataset"],
        "Dice (mean per tumour slice)",
        "dice_per_tumor_image",
        None,
    ),
}


def card_value(card: str, row: str) -> float:
    match = re.search(rf"^\| {re.escape(row)} \| ([0-9.]+) \[", card, re.MULTILINE)
    assert match, f"no '| {row} | value [' row in the card"
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(CARDS))
def test_the_bundled_file_has_the_size_its_card_states(name):
    card = (MODELS / f"{name}.md").read_text()
    stated = float(re.search(rf"`models/{name}.safetensors`, ([0-9.]+) MB", card).group(1))
    assert (MODELS / f"{name}.safetensors").stat().st_size / 2**20 == pytest.approx(stated, abs=0.05)


@pytest.mark.slow  # evaluates on the real data
@pytest.mark.parametrize("name", sorted(CARDS))
def test_the_bundled_model_scores_what_its_card_states(name, tmp_path):
    datasets, arguments, row, key, pooled = CARDS[name]
    roots = [SHARED_DATA / dataset for dataset in datasets]
    if not all(root.is_dir() for root in roots):
        pytest.skip(f"{', '.join(map(str, roots))} not here: the card's numbers cannot be recomputed on this machine")
    arguments = [argument.format(data=SHARED_DATA) for argument in arguments]
    result = run_script(
        "evaluate.py",
        "--ckpt_path",
        str(MODELS / f"{name}.safetensors"),
        "--data_root",
        *map(str, roots),
        *arguments,
        "--bootstrap",
        "10",
        "--output_dir",
        "report",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads((tmp_path / "report" / "metrics.json").read_text())
    if pooled:  # right answers over the images of those datasets
        folders = tuple(f"{SHARED_DATA / dataset}/" for dataset in pooled)
        correct = [image["correct"] for image in measured["per_image"] if image["file"].startswith(folders)]
        value = sum(correct) / len(correct)
    else:
        value = (measured["all_images"][key] if "all_images" in measured else measured[key])["value"]
    assert value == pytest.approx(card_value((MODELS / f"{name}.md").read_text(), row), abs=TOLERANCE)
