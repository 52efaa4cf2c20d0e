"""Training logic: one LightningModule per task on shared optimizer, metric and figure code."""

from lightning_modules.classification import ClassificationModule

__all__ = ["ClassificationModule"]
