"""Fixtures: tiny generated datasets in both Kaggle layouts, never the real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SARTAJ_FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
MRI_DATASET_FOLDERS = ("glioma", "meningioma", "notumor", "pituitary")


def synthetic_slice(rng: np.random.Generator, label: int, size: int = 48) -> np.ndarray:
    """Smooth random 'tissue' (so no two images share a perceptual hash) with a bright
    blob whose position depends on the class; class 2 (no tumor) has none."""
    tissue = cv2.resize(rng.integers(20, 140, (6, 6)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    if label != 2:
        centre = [(size // 3, size // 3), (2 * size // 3, size // 3), None, (size // 2, 2 * size // 3)][label]
        cv2.circle(tissue, centre, size // 8, 230, -1)
    return tissue


def make_classification_dataset(
    root: Path, folders: tuple[str, ...], per_class: int = 8, with_testing: bool = True, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    splits = {"Training": per_class} | ({"Testing": max(2, per_class // 4)} if with_testing else {})
    for split, count in splits.items():
        for label, folder in enumerate(folders):
            target = root / split / folder
            target.mkdir(parents=True)
            for i in range(count):
                image = synthetic_slice(rng, label, size=int(rng.choice([40, 48, 56])))
                if i % 2:  # half the files RGB JPEGs, half grayscale PNGs
                    cv2.imwrite(str(target / f"{split[:2]}{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
                else:
                    cv2.imwrite(str(target / f"{split[:2]}{i}.png"), image)
    return root


@pytest.fixture
def sartaj_root(tmp_path: Path) -> Path:
    return make_classification_dataset(tmp_path / "sartaj", SARTAJ_FOLDERS)


@pytest.fixture
def mri_dataset_root(tmp_path: Path) -> Path:
    return make_classification_dataset(tmp_path / "mri", MRI_DATASET_FOLDERS, with_testing=False)


def run_script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, from `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(REPO / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
