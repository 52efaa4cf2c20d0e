"""Training logic: one LightningModule per task on shared optimizer, metric and figure code."""

from lightning_modules.classification import ClassificationModule
from lightning_modules.segmentation import SegmentationModule

__all__ = ["ClassificationModule", "SegmentationModule"]
