"""Segmentation results: IoU and Dice pooled over all pixels and per image, each with a
bootstrap interval, from per-image pixel counts (lightning_modules.metrics.segmentation_stats)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from evaluation.bootstrap import bootstrap_intervals, interval_text, with_interval
from lightning_modules.metrics import per_image_scores, segmentation_scores
from lightning_modules.visualization import segmentation_figure

IOU_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PIXEL_COUNTS = ("tp", "fp", "tn", "fn")  # the columns of segmentation_stats, kept per image so reports can be compared
EMPTY_TRUTH_RULE = (
    "per-image IoU/Dice is 1 when truth and prediction are both empty, 0 when only the truth is; such images add "
    "nothing to the global scores, which pool pixels over all images"
)


def segmentation_report(stats: torch.Tensor, files: list[str], resamples: int = 1000, seed: int = 0) -> dict:
    """JSON-ready numbers from per-image [tp, fp, tn, fn, support] rows, every IoU and Dice with
    its 95% bootstrap interval, and every image's IoU, Dice and pixel counts."""
    iou, dice = per_image_scores(stats)
    has_tumor = (stats[:, 0] + stats[:, 3]) > 0
    predicted_empty = (stats[:, 0] + stats[:, 1]) == 0
    point = segmentation_scores(stats)
    statistics = {name: (lambda indices, name=name: segmentation_scores(stats[indices])[name]) for name in point}
    intervals = bootstrap_intervals(statistics, len(stats), resamples, seed)
    return {
        "num_images": len(stats),
        **{name: with_interval(value, intervals[name]) for name, value in point.items()},
        "per_image_iou_quantiles": {
            f"q{round(q * 100)}": float(torch.quantile(iou[has_tumor], q)) for q in IOU_QUANTILES
        }
        if has_tumor.any()
        else {},
        "empty_ground_truth": {
            "images": int((~has_tumor).sum()),
            "predicted_empty": int((~has_tumor & predicted_empty).sum()),
            "how_counted": EMPTY_TRUTH_RULE,
        },
        "per_image": [
            {
                "file": file,
                "iou": round(float(i), 4),
                "dice": round(float(d), 4),
                **dict(zip(PIXEL_COUNTS, map(int, counts[:4]))),
            }
            for file, i, d, counts in zip(files, iou, dice, stats.tolist())
        ],
    }


def stats_of_rows(rows: list[dict]) -> torch.Tensor:
    """The [tp, fp, tn, fn, support] rows of segmentation_stats again, from a report's per-image rows."""
    counts = torch.tensor([[row[name] for name in PIXEL_COUNTS] for row in rows], dtype=torch.long).reshape(-1, 4)
    return torch.cat([counts, counts[:, :1] + counts[:, 3:4]], dim=1)


def format_segmentation_report(report: dict, title: str) -> str:
    def text(name: str) -> str:
        return interval_text(report[name])

    empty = report["empty_ground_truth"]
    quantiles = ", ".join(f"{k} {v:.3f}" for k, v in report["per_image_iou_quantiles"].items())
    return "\n".join(
        [
            f"{title}: {report['num_images']} images (95% bootstrap intervals)",
            f"global (pixels pooled):  IoU {text('iou_global')}  Dice {text('dice_global')}",
            f"mean per image:          IoU {text('iou_per_image')}  Dice {text('dice_per_image')}",
            f"mean per tumor image:    IoU {text('iou_per_tumor_image')}",
            f"per-image IoU quantiles (tumor images): {quantiles}",
            f"empty ground truth: {empty['images']} images, {empty['predicted_empty']} predicted empty",
        ]
    )


def worst_and_best(report: dict, count: int = 4) -> dict[str, list[int]]:
    """Indices of the `count` images with the lowest and the highest IoU."""
    order = np.argsort([row["iou"] for row in report["per_image"]], kind="stable")
    return {"worst_cases": order[:count].tolist(), "best_cases": order[::-1][:count].tolist()}


def case_figure(
    report: dict, indices: list[int], images: torch.Tensor, truths: torch.Tensor, predictions: torch.Tensor
) -> Figure:
    """Image / truth / prediction rows for the given images, titled with their IoU."""
    titles = [f"IoU {report['per_image'][i]['iou']:.2f}" for i in indices]
    return segmentation_figure(images, truths, predictions, titles)
