"""Data for both tasks: Kaggle folder layouts in, cached tensors out."""

from datamodules.classification import CLASS_NAMES, ClassificationDataModule
from datamodules.common import DatasetError
from datamodules.segmentation import SegmentationDataModule

__all__ = ["CLASS_NAMES", "ClassificationDataModule", "DatasetError", "SegmentationDataModule"]
