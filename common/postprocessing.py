"""The segmenter's own post-processing of its masks: connected components, and dropping those
too small to be a tumour (`SegmentationModule.min_tumor_area`)."""

from __future__ import annotations

import cv2
import numpy as np


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels image, per-component [x, y, width, height, area]) of a binary mask, 8-connected;
    component 0, the background, is left out of the rows."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[1:]


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The mask without its components of fewer than `min_area` pixels."""
    if min_area <= 1:
        return mask
    labels, stats = connected_components(mask)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area) + 1
    return np.where(np.isin(labels, small), 0, mask).astype(mask.dtype)
