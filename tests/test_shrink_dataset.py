"""scripts/shrink_dataset.py: a smaller copy of a segmentation dataset still pairs every image with its
mask, keeps masks exact (nearest neighbour, lossless) and its metadata's labels and patients."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from conftest import make_mask_folders, script_module, tumor_slice

from datamodules.mask_sources import find_layout, read_mask_file, read_source


def shrink(source: Path, target: Path, max_side: int) -> None:
    script_module("scripts/shrink_dataset.py").main([str(source), str(target), "--max_side", str(max_side)])


def test_image_mask_folders_keep_exact_masks_and_metadata(tmp_path):
    source = make_mask_folders(tmp_path / "pairs", ["P1", "P2a", "P2b"], per_patient=2)
    shrink(source, tmp_path / "small", max_side=32)
    original = {item.path.stem: item for item in read_source(source).images}
    shrunk = read_source(tmp_path / "small").images
    assert sorted(item.path.stem for item in shrunk) == sorted(original)
    for item in shrunk:
        before = original[item.path.stem]
        assert (item.path.suffix, item.mask.suffix) == (".jpg", ".png")
        assert (item.label, item.patient) == (before.label, before.patient)
        expected = cv2.resize(read_mask_file(before.mask), (32, 32), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(read_mask_file(item.mask), expected)
    with (tmp_path / "small" / "metadata.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert all(
        (tmp_path / "small" / row["image"]).is_file() and (tmp_path / "small" / row["mask"]).is_file() for row in rows
    )


def test_masks_beside_images_stay_paired(tmp_path):
    patient = tmp_path / "lgg" / "case_4941"
    patient.mkdir(parents=True)
    for k in range(2):
        image, mask = tumor_slice(np.random.default_rng(k))
        cv2.imwrite(str(patient / f"slice_{k}.tif"), image)
        cv2.imwrite(str(patient / f"slice_{k}_mask.tif"), mask * 255)
    shrink(tmp_path / "lgg", tmp_path / "small", max_side=48)
    assert find_layout(tmp_path / "small") == "masks beside images"
    items = read_source(tmp_path / "small").images
    assert sorted(item.path.name for item in items) == ["slice_0.png", "slice_1.png"]
    assert all(read_mask_file(item.mask).shape == (48, 48) and item.patient == "case_4941" for item in items)


def test_images_small_enough_are_copied_unchanged(tmp_path):
    folder = tmp_path / "Training" / "notumor"
    folder.mkdir(parents=True)
    image, _ = tumor_slice(np.random.default_rng(0))
    cv2.imwrite(str(folder / "small.jpg"), image)
    cv2.imwrite(str(folder / "large.jpg"), cv2.resize(image, (128, 128)))
    shrink(tmp_path / "Training", tmp_path / "small", max_side=64)
    assert (tmp_path / "small" / "notumor" / "small.jpg").read_bytes() == (folder / "small.jpg").read_bytes()
    assert cv2.imread(str(tmp_path / "small" / "notumor" / "large.jpg")).shape == (64, 64, 3)
