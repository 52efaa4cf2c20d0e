"""Metric sets that training logs, and the segmentation statistics that both training and
evaluation (evaluation/segmentation.py) compute their scores from."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryPrecisionRecallCurve,
    BinaryStatScores,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import multiclass_calibration_error


def classification_metrics(num_classes: int) -> MetricCollection:
    """Micro and macro accuracy, per-class precision/recall/F1 and the confusion matrix."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "acc_macro": MulticlassAccuracy(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
            "confmat": MulticlassConfusionMatrix(num_classes),
        }
    )


def segmentation_stats() -> BinaryStatScores:
    """Per-image pixel counts [tp, fp, tn, fn, support], kept for every image of the epoch.

    Global and per-image IoU/Dice both derive from them (`segmentation_scores`), so the
    two averages always describe the same predictions."""
    return BinaryStatScores(threshold=0.5, multidim_average="samplewise")


def per_image_scores(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and Dice of each image. An image with an empty ground truth scores 1 when the
    prediction is empty too (a correct "no tumor") and 0 otherwise."""
    tp, fp, _, fn = stats[:, 0].double(), stats[:, 1].double(), stats[:, 2], stats[:, 3].double()
    union = tp + fp + fn
    both_empty = union == 0
    iou = torch.where(both_empty, 1.0, tp / union.clamp_min(1))
    dice = torch.where(both_empty, 1.0, 2 * tp / (2 * tp + fp + fn).clamp_min(1))
    return iou, dice


def segmentation_scores(stats: torch.Tensor) -> dict[str, float]:
    """Global IoU/Dice (pixels pooled over all images) and per-image means over all
    images, plus the per-image mean over images whose ground truth has tumor."""
    tp, fp, fn = (stats[:, i].double().sum() for i in (0, 1, 3))
    iou, dice = per_image_scores(stats)
    has_tumor = (stats[:, 0] + stats[:, 3]) > 0
    return {
        "iou_global": float(tp / (tp + fp + fn).clamp_min(1)),
        "dice_global": float(2 * tp / (2 * tp + fp + fn).clamp_min(1)),
        "iou_per_image": float(iou.mean()),
        "dice_per_image": float(dice.mean()),
        "iou_per_tumor_image": float(iou[has_tumor].mean()) if has_tumor.any() else float("nan"),
        "dice_per_tumor_image": float(dice[has_tumor].mean()) if has_tumor.any() else float("nan"),
    }


THRESHOLD_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.1, 0.15, ..., 0.9


def threshold_curve() -> BinaryPrecisionRecallCurve:
    """Pixel precision and recall at each probability threshold of THRESHOLD_GRID, pooled over
    all images: constant memory, whatever the number of images."""
    return BinaryPrecisionRecallCurve(thresholds=torch.tensor(THRESHOLD_GRID))


def iou_by_threshold(curve: BinaryPrecisionRecallCurve) -> dict[float, float]:
    """Global IoU at each threshold of the curve.

    IoU = TP / (TP + FP + FN) = P R / (P + R - P R), from the curve's precision P and recall R."""
    precision, recall, thresholds = curve.compute()
    precision, recall = precision[: len(thresholds)].double(), recall[: len(thresholds)].double()
    denominator = precision + recall - precision * recall
    iou = torch.where(denominator > 0, precision * recall / denominator.clamp_min(1e-12), 0.0)
    return {round(float(t), 4): float(value) for t, value in zip(thresholds, iou)}


def best_threshold(curve: BinaryPrecisionRecallCurve) -> tuple[float, float]:
    """The threshold of the curve with the highest global IoU, and that IoU."""
    ious = iou_by_threshold(curve)
    threshold = max(ious, key=ious.get)
    return threshold, ious[threshold]


ECE_BINS = 15


def calibration_error(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error (top-label, 15 equal-width bins), torchmetrics'."""
    return float(multiclass_calibration_error(probabilities, labels, probabilities.shape[1], n_bins=ECE_BINS))
