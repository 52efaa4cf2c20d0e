"""Training logic: one LightningModule per task on shared optimizer, metric and figure code.

The task modules are imported on first use, so that a light submodule (metrics, calibration)
does not load Lightning, timm and smp with it."""

from __future__ import annotations

import importlib

__all__ = ["ClassificationModule", "SegmentationModule"]

_HOMES = {
    "ClassificationModule": "lightning_modules.classification",
    "SegmentationModule": "lightning_modules.segmentation",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
