"""Calibration of class probabilities: temperature scaling (Guo et al., 2017), expected calibration
error, reliability diagrams, and ROC / precision-recall curves."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import (
    multiclass_auroc,
    multiclass_precision_recall_curve,
    multiclass_roc,
)

from common.metrics import ECE_BINS, calibration_error


def reliability_diagram(curves: dict[str, torch.Tensor], labels: torch.Tensor, title: str = "") -> Figure:
    """Accuracy against confidence per bin, one line per set of probabilities (e.g. before and
    after temperature scaling); the diagonal is perfect calibration."""
    fig = Figure(figsize=(4.8, 4.4), dpi=100)
    ax = fig.subplots()
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for name, probabilities in curves.items():
        confidence, predicted = probabilities.max(dim=1)
        correct = (predicted == labels).float().numpy()
        bins = np.clip(np.digitize(confidence.numpy(), edges[1:-1]), 0, ECE_BINS - 1)
        filled = [b for b in range(ECE_BINS) if (bins == b).any()]
        ax.plot(
            [confidence.numpy()[bins == b].mean() for b in filled],
            [correct[bins == b].mean() for b in filled],
            marker="o",
            label=f"{name} (ECE {calibration_error(probabilities, labels):.3f})",
        )
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def roc_and_pr_figure(probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """One-vs-rest ROC and precision-recall curves per class, with their AUROC; a class without
    images in the set has neither (n/a)."""
    num_classes = len(class_names)
    aurocs = auroc_per_class(probabilities, labels, class_names)
    with warnings.catch_warnings():  # torchmetrics warns of each absent class; it is left out below
        warnings.simplefilter("ignore", UserWarning)
        fpr, tpr, _ = multiclass_roc(probabilities, labels, num_classes)
        precision, recall, _ = multiclass_precision_recall_curve(probabilities, labels, num_classes)
    fig = Figure(figsize=(9.6, 4.2), dpi=100)
    (roc_ax, pr_ax) = fig.subplots(1, 2)
    for c, name in enumerate(class_names):
        if aurocs[name] is None:
            continue
        roc_ax.plot(fpr[c], tpr[c], label=f"{name} (AUROC {aurocs[name]:.3f})")
        pr_ax.plot(recall[c], precision[c], label=name)
    roc_ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class against the rest")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    roc_ax.legend(fontsize=8, loc="lower right")
    pr_ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def auroc_per_class(
    probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
) -> dict[str, float | None]:
    """One-vs-rest AUROC per class; None (undefined) for a class with no image in the set, or with
    nothing but its own images."""
    with warnings.catch_warnings():  # torchmetrics warns of each such class, and scores it 0
        warnings.simplefilter("ignore", UserWarning)
        values = multiclass_auroc(probabilities, labels, len(class_names), average=None)
    counts = torch.bincount(labels, minlength=len(class_names))
    return {
        name: float(value) if 0 < counts[c] < len(labels) else None
        for c, (name, value) in enumerate(zip(class_names, values))
    }
