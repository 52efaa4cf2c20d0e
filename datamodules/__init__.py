"""Data for both tasks: Kaggle folder layouts in, cached tensors out.

The datamodules are imported on first use, so that `datamodules.errors`, which every layer
imports, loads nothing else."""

from __future__ import annotations

import importlib

__all__ = ["CLASS_NAMES", "ClassificationDataModule", "DatasetError", "SegmentationDataModule", "UserError"]

_HOMES = {
    "CLASS_NAMES": "datamodules.classification",
    "ClassificationDataModule": "datamodules.classification",
    "SegmentationDataModule": "datamodules.segmentation",
    "DatasetError": "datamodules.errors",
    "UserError": "datamodules.errors",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
