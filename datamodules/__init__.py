"""Data for both tasks: Kaggle folder layouts in, cached tensors out.

The datamodules are imported on first use, so that `datamodules.errors`, which every layer
imports, loads nothing else."""

from __future__ import annotations

import importlib
import os

# albumentations asks PyPI for a newer release when it is first imported: training must not wait on the
# network (offline and firewalled machines). Set here, where the package loads before any of its modules
# imports albumentations, and only as a default, so that a user can turn the check back on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["CLASS_NAMES", "ClassificationDataModule", "DatasetError", "SegmentationDataModule", "UserError"]

_HOMES = {
    "CLASS_NAMES": "datamodules.labels",
    "ClassificationDataModule": "datamodules.classification",
    "SegmentationDataModule": "datamodules.segmentation",
    "DatasetError": "datamodules.errors",
    "UserError": "datamodules.errors",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
