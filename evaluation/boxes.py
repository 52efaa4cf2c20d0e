"""Detection-style scores for a segmenter whose ground truth is boxes.

Every tumour "polygon" of the Roboflow export is its bounding rectangle, so pixel IoU against
filled boxes rewards predicting boxes. These scores ask instead whether each tumour was found:
each connected component of a mask is one tumour, described by its bounding box; a predicted box
finds a true one when their IoU reaches MATCH_IOU (one-to-one, best pairs first, as in COCO's
matching). Ground-truth boxes come from the truth mask's components too, so two overlapping true
boxes count as one tumour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from common.postprocessing import connected_components
from evaluation.bootstrap import bootstrap_intervals, interval_text, ratio_of_sums, with_interval

MATCH_IOU = 0.5


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """The bounding box [x0, y0, x1, y1) of each connected component, as an (n, 4) float array."""
    _, stats = connected_components(mask)
    x, y, width, height = (stats[:, i].astype(float) for i in range(4))
    return np.stack([x, y, x + width, y + height], axis=1)


@dataclass
class ImageBoxes:
    """One image's tumours: how many are true, predicted and matched, and each true box's best IoU."""

    truth: int
    predicted: int
    matched: int
    best_iou: list[float]  # per true box, with any predicted box (0 when none was predicted)


def match_boxes(predicted: np.ndarray, truth: np.ndarray, threshold: float = MATCH_IOU) -> ImageBoxes:
    """Pair predicted and true boxes one-to-one, highest IoU first, while the IoU reaches `threshold`."""
    if len(truth) == 0 or len(predicted) == 0:
        return ImageBoxes(len(truth), len(predicted), 0, [0.0] * len(truth))
    iou = box_iou(torch.from_numpy(predicted), torch.from_numpy(truth)).numpy()
    best_iou = iou.max(axis=0).tolist()
    matched = 0
    while iou.size and iou.max() >= threshold:
        row, column = np.unravel_index(iou.argmax(), iou.shape)
        iou[row, :], iou[:, column] = -1, -1
        matched += 1
    return ImageBoxes(len(truth), len(predicted), matched, best_iou)


def image_boxes(predicted_mask: np.ndarray, truth_mask: np.ndarray) -> ImageBoxes:
    return match_boxes(component_boxes(predicted_mask), component_boxes(truth_mask))


def box_report(images: list[ImageBoxes], resamples: int = 1000, seed: int = 0) -> dict:
    """Tumour recall and precision at box IoU >= MATCH_IOU, the mean best box IoU of the true
    tumours, and the share of tumour-free images given a tumour, each with a 95% bootstrap interval."""
    truth, predicted, matched = (
        np.array([getattr(image, name) for image in images], dtype=float) for name in ("truth", "predicted", "matched")
    )
    best_iou = [np.array(image.best_iou) for image in images]
    empty = truth == 0

    def mean_best_iou(indices: np.ndarray) -> float:
        values = np.concatenate([best_iou[i] for i in indices])
        return float(values.mean()) if len(values) else np.nan

    statistics = {
        "tumor_recall": ratio_of_sums(matched, truth),
        "tumor_precision": ratio_of_sums(matched, predicted),
        "mean_box_iou": mean_best_iou,
        "false_positive_image_rate": ratio_of_sums(empty & (predicted > 0), empty),
    }
    everything = np.arange(len(images))
    intervals = bootstrap_intervals(statistics, len(images), resamples, seed)
    return {
        "match_iou": MATCH_IOU,
        "true_tumors": int(truth.sum()),
        "predicted_tumors": int(predicted.sum()),
        "found_tumors": int(matched.sum()),
        "images_without_tumor": int(empty.sum()),
        **{name: with_interval(statistic(everything), intervals[name]) for name, statistic in statistics.items()},
    }


def format_box_report(report: dict) -> str:
    def text(name: str) -> str:
        return interval_text(report[name])

    return (
        f"tumours as boxes (box IoU >= {report['match_iou']}): recall {text('tumor_recall')} "
        f"({report['found_tumors']} of {report['true_tumors']}), precision {text('tumor_precision')} "
        f"({report['predicted_tumors']} predicted), mean best box IoU {text('mean_box_iou')}\n"
        f"images without a tumour given one: {text('false_positive_image_rate')} "
        f"(of {report['images_without_tumor']})"
    )
