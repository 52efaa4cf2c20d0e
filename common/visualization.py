"""Figures both tasks log to TensorBoard and evaluate.py saves as PNG."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure


def confusion_matrix_figure(confmat: torch.Tensor, class_names: Sequence[str], title: str = "") -> Figure:
    """Counts with row-normalized colour, so small classes stay readable."""
    counts = confmat.detach().cpu().numpy().astype(int)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(5.5, 4.8), dpi=100)
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            f"{count}\n{rates[row, col]:.0%}",
            ha="center",
            va="center",
            color="white" if rates[row, col] > 0.5 else "black",
            fontsize=9,
        )
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row %: recall)")
    fig.tight_layout()
    return fig


def to_display(image: torch.Tensor) -> np.ndarray:
    """A normalized CxHxW tensor as an HxWx3 float image in [0, 1] (each channel min-max stretched)."""
    array = image.detach().float().cpu()
    low, high = array.amin(dim=(1, 2), keepdim=True), array.amax(dim=(1, 2), keepdim=True)
    array = (array - low) / (high - low).clamp_min(1e-6)
    array = array.permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def overlay(image: np.ndarray, mask: np.ndarray, colour: Sequence[float], alpha: float = 0.45) -> np.ndarray:
    """Tint the pixels of a binary HxW mask on an HxWx3 image in [0, 1]."""
    out = image.copy()
    out[mask > 0] = (1 - alpha) * out[mask > 0] + alpha * np.asarray(colour)
    return out


def segmentation_figure(
    images: torch.Tensor,
    targets: torch.Tensor,
    predictions: torch.Tensor,
    titles: Sequence[str] | None = None,
) -> Figure:
    """One row per sample: image | ground truth (green) | prediction (red)."""
    rows = len(images)
    fig = Figure(figsize=(7.5, 2.5 * rows), dpi=100)
    axes = fig.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        image = to_display(images[row])
        panels = (
            (image, "image"),
            (overlay(image, targets[row].squeeze().cpu().numpy(), (0.0, 1.0, 0.0)), "ground truth"),
            (overlay(image, predictions[row].squeeze().cpu().numpy(), (1.0, 0.0, 0.0)), "prediction"),
        )
        for col, (panel, label) in enumerate(panels):
            axes[row, col].imshow(panel)
            axes[row, col].set_axis_off()
            axes[row, col].set_title(f"{label}{' - ' + titles[row] if titles and col == 2 else ''}", fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An HxW map in [0, 1] as a jet-coloured overlay on an HxWx3 uint8 RGB image."""
    colours = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, cv2.cvtColor(colours, cv2.COLOR_BGR2RGB), alpha, 0)


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """A binary HxW mask tinted and outlined on an HxWx3 uint8 RGB image."""
    tinted = (overlay(image.astype(np.float32) / 255, mask, np.array(colour) / 255) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(tinted, contours, -1, colour, max(1, image.shape[0] // 200))
