"""Training logic: one LightningModule per task on shared optimizer, loss and checkpoint code."""

from __future__ import annotations

from lightning_modules.classification import ClassificationModule
from lightning_modules.segmentation import SegmentationModule

__all__ = ["ClassificationModule", "SegmentationModule"]
