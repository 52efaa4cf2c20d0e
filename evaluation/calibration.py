"""Calibration of class probabilities: temperature scaling (Guo et al., 2017), expected calibration
error, reliability diagrams, and ROC / precision-recall curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torchmetrics.functional.classification import (
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_precision_recall_curve,
    multiclass_roc,
)

ECE_BINS = 15


TEMPERATURE_RANGE = (0.2, 10.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T that minimizes the negative log-likelihood of softmax(logits / T).

    One parameter, fitted on held-out (validation) logits: it changes how sure the model says it
    is, never what it predicts. Optimized in log space, so T stays positive, and kept within
    TEMPERATURE_RANGE: on a validation set without a single error the likelihood keeps rising as
    T falls towards 0, which would call every later prediction certain. (The likelihood is convex
    in 1/T, so the bounded optimum is the unbounded one, clipped.)"""
    logits, labels = logits.detach().double(), labels.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return min(max(float(log_t.detach().exp()), low), high)


def calibration_error(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error (top-label, 15 equal-width bins), torchmetrics'."""
    return float(multiclass_calibration_error(probabilities, labels, probabilities.shape[1], n_bins=ECE_BINS))


def reliability_diagram(curves: dict[str, torch.Tensor], labels: torch.Tensor, title: str = "") -> Figure:
    """Accuracy against confidence per bin, one line per set of probabilities (e.g. before and
    after temperature scaling); the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for name, probabilities in curves.items():
        confidence, predicted = probabilities.max(dim=1)
        correct = (predicted == labels).float().numpy()
        bins = np.clip(np.digitize(confidence.numpy(), edges[1:-1]), 0, ECE_BINS - 1)
        filled = [b for b in range(ECE_BINS) if (bins == b).any()]
        ax.plot([confidence.numpy()[bins == b].mean() for b in filled], [correct[bins == b].mean() for b in filled],
                marker="o", label=f"{name} (ECE {calibration_error(probabilities, labels):.3f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def roc_and_pr_figure(probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """One-vs-rest ROC and precision-recall curves per class, with their AUROC."""
    num_classes = len(class_names)
    aurocs = multiclass_auroc(probabilities, labels, num_classes, average=None)
    fpr, tpr, _ = multiclass_roc(probabilities, labels, num_classes)
    precision, recall, _ = multiclass_precision_recall_curve(probabilities, labels, num_classes)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9.6, 4.2), dpi=100)
    for c, name in enumerate(class_names):
        roc_ax.plot(fpr[c], tpr[c], label=f"{name} (AUROC {float(aurocs[c]):.3f})")
        pr_ax.plot(recall[c], precision[c], label=name)
    roc_ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class against the rest")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    roc_ax.legend(fontsize=8, loc="lower right")
    pr_ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def auroc_per_class(probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    values = multiclass_auroc(probabilities, labels, len(class_names), average=None)
    return {name: float(value) for name, value in zip(class_names, values)}
