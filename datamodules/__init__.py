"""Data for both tasks: Kaggle folder layouts in, cached tensors out."""

import os

# albumentations asks PyPI for a newer release when it is imported: training must not wait on
# the network (offline and firewalled machines), so that check stays off unless a user turns it on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from datamodules.classification import CLASS_NAMES, ClassificationDataModule  # noqa: E402
from datamodules.errors import DatasetError, UserError  # noqa: E402
from datamodules.segmentation import SegmentationDataModule  # noqa: E402

__all__ = ["CLASS_NAMES", "ClassificationDataModule", "DatasetError", "SegmentationDataModule", "UserError"]
