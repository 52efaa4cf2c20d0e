"""Data for both tasks: every source's layout in, cached tensors out; the two datamodules the configs name."""

from __future__ import annotations

import os

# albumentations asks PyPI for a newer release when it is first imported: training must not wait on the
# network (offline and firewalled machines). Set here, where the package loads before any of its modules
# imports albumentations, and only as a default, so that a user can turn the check back on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from common.errors import DatasetError, UserError  # noqa: E402 (after the environment default above)
from common.labels import CLASS_NAMES  # noqa: E402
from datamodules.classification import ClassificationDataModule  # noqa: E402
from datamodules.segmentation import SegmentationDataModule  # noqa: E402

__all__ = ["CLASS_NAMES", "ClassificationDataModule", "DatasetError", "SegmentationDataModule", "UserError"]
