"""Segmentation results: IoU and Dice pooled over all pixels and per image, each with a
bootstrap interval, from per-image pixel counts (common.metrics.segmentation_stats)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from matplotlib.figure import Figure

from common.metrics import per_image_scores, segmentation_scores
from common.visualization import segmentation_figure
from evaluation.bootstrap import Statistic, bootstrap_intervals, interval_text, ratio_of_sums, with_interval

IOU_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PIXEL_COUNTS = ("tp", "fp", "tn", "fn")  # the columns of segmentation_stats, kept per image so reports can be compared
BOUNDARY_DISTANCES = ("hd95", "mean_surface_distance")
BOUNDARY_RULE = (
    "per image with a tumour in both truth and prediction (MONAI, in pixels at the model's input size), averaged "
    "over those images; undefined where either mask is empty"
)
EMPTY_TRUTH_RULE = (
    "per-image IoU/Dice is 1 when truth and prediction are both empty, 0 when only the truth is; such images add "
    "nothing to the global scores, which pool pixels over all images"
)


def detection_statistics(stats: torch.Tensor) -> dict[str, Statistic]:
    """The two detection rates over resampled images, from per-image [tp, fp, tn, fn, ...] rows: tumour
    slices given any tumour pixel, and healthy slices given none."""
    tumor = ((stats[:, 0] + stats[:, 3]) > 0).numpy()
    found = ((stats[:, 0] + stats[:, 1]) > 0).numpy()
    return {
        "tumor_slices_given_a_tumor": ratio_of_sums(tumor & found, tumor),
        "healthy_slices_given_none": ratio_of_sums(~tumor & ~found, ~tumor),
    }


def pixel_statistics(stats: torch.Tensor) -> dict[str, Statistic]:
    """Mean pixel precision and recall over the tumour slices, from per-image [tp, fp, tn, fn, ...] rows:
    whether masks spill over their tumours (precision below recall) or fall short of them. A tumour
    slice given no tumour has precision 0, as it has Dice 0; healthy slices do not count."""
    tp, fp, fn = (stats[:, i].double().numpy() for i in (0, 1, 3))
    tumor = (tp + fn) > 0
    precision = np.where(tumor, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tumor, tp / np.maximum(tp + fn, 1), 0.0)
    return {
        "precision_per_tumor_image": ratio_of_sums(precision, tumor),
        "recall_per_tumor_image": ratio_of_sums(recall, tumor),
    }


def segmentation_report(
    stats: torch.Tensor,
    files: list[str],
    resamples: int = 1000,
    seed: int = 0,
    labels: list[str] | None = None,
    distances: np.ndarray | None = None,
) -> dict:
    """JSON-ready numbers from per-image [tp, fp, tn, fn, support] rows, every IoU and Dice with
    its 95% bootstrap interval, and every image's IoU, Dice and pixel counts; with each image's
    class (`labels`), the mean Dice per class; with its boundary `distances` (N, 2: 95th-percentile
    Hausdorff and mean surface distance, NaN where undefined), their means."""
    iou, dice = per_image_scores(stats)
    has_tumor = (stats[:, 0] + stats[:, 3]) > 0
    predicted_empty = (stats[:, 0] + stats[:, 1]) == 0
    point = segmentation_scores(stats)
    pixels = pixel_statistics(stats)
    statistics = detection_statistics(stats) | pixels
    tumor = has_tumor.numpy()
    dice_values = dice.numpy()
    classes = sorted({label for label, t in zip(labels or [], tumor) if t})
    for name in classes:
        of_class = np.array([label == name for label in labels]) & tumor
        statistics[f"dice/{name}"] = ratio_of_sums(dice_values * of_class, of_class)
    if distances is not None:
        for column, name in enumerate(BOUNDARY_DISTANCES):
            defined = np.isfinite(distances[:, column])
            statistics[name] = ratio_of_sums(np.where(defined, distances[:, column], 0), defined)
    everything = np.arange(len(stats))
    joint = lambda indices: segmentation_scores(stats[indices])  # noqa: E731 (every score in one pass)
    intervals = bootstrap_intervals(statistics, len(stats), resamples, seed, joint=joint)
    extra = {name: with_interval(statistics[name](everything), intervals[name]) for name in statistics}
    return {
        "num_images": len(stats),
        **{name: with_interval(value, intervals[name]) for name, value in point.items()},
        **{name: extra.pop(name) for name in pixels},
        "detection": {
            "tumor_slices": int(tumor.sum()),
            "healthy_slices": int((~has_tumor).sum()),
            "tumor_slices_given_a_tumor": extra.pop("tumor_slices_given_a_tumor"),
            "healthy_slices_given_none": extra.pop("healthy_slices_given_none"),
        },
        "dice_per_class": {name: extra.pop(f"dice/{name}") for name in classes},
        **(
            {
                "boundary_distance_px": {
                    **{name: extra.pop(name) for name in BOUNDARY_DISTANCES},
                    "images": int(np.isfinite(distances[:, 0]).sum()),
                    "how_counted": BOUNDARY_RULE,
                }
            }
            if distances is not None
            else {}
        ),
        "per_image_dice_quantiles": {
            f"q{round(q * 100)}": float(torch.quantile(dice[has_tumor], q)) for q in IOU_QUANTILES
        }
        if has_tumor.any()
        else {},
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
                **({"label": labels[index]} if labels else {}),
                **(
                    {
                        name: round(float(value), 3) if np.isfinite(value) else None
                        for name, value in zip(BOUNDARY_DISTANCES, distances[index])
                    }
                    if distances is not None
                    else {}
                ),
            }
            for index, (file, i, d, counts) in enumerate(zip(files, iou, dice, stats.tolist()))
        ],
    }


def stats_of_rows(rows: list[dict]) -> torch.Tensor:
    """The [tp, fp, tn, fn, support] rows of segmentation_stats again, from a report's per-image rows."""
    counts = torch.tensor([[row[name] for name in PIXEL_COUNTS] for row in rows], dtype=torch.long).reshape(-1, 4)
    return torch.cat([counts, counts[:, :1] + counts[:, 3:4]], dim=1)


def format_segmentation_report(report: dict, title: str) -> str:
    def text(name: str) -> str:
        return interval_text(report[name])

    empty, detection = report["empty_ground_truth"], report["detection"]
    quantiles = ", ".join(f"{k} {v:.3f}" for k, v in report["per_image_iou_quantiles"].items())
    dice_quantiles = ", ".join(f"{k} {v:.3f}" for k, v in report["per_image_dice_quantiles"].items())
    lines = [
        f"{title}: {report['num_images']} images (95% bootstrap intervals)",
        f"global (pixels pooled):  IoU {text('iou_global')}  Dice {text('dice_global')}",
        f"mean per image:          IoU {text('iou_per_image')}  Dice {text('dice_per_image')}",
        f"mean per tumor image:    IoU {text('iou_per_tumor_image')}  Dice {text('dice_per_tumor_image')}",
        f"pixels per tumor image:  precision {text('precision_per_tumor_image')}  "
        f"recall {text('recall_per_tumor_image')}",
        f"per-image quantiles (tumor images): IoU {quantiles}; Dice {dice_quantiles}",
        f"tumour slices given a tumour: {interval_text(detection['tumor_slices_given_a_tumor'])} "
        f"(of {detection['tumor_slices']}); healthy slices given none: "
        f"{interval_text(detection['healthy_slices_given_none'])} (of {detection['healthy_slices']})",
        f"empty ground truth: {empty['images']} images, {empty['predicted_empty']} predicted empty",
    ]
    if report["dice_per_class"]:
        lines.append(
            "mean Dice per class: "
            + ", ".join(f"{name} {interval_text(entry)}" for name, entry in report["dice_per_class"].items())
        )
    if "boundary_distance_px" in report:
        boundary = report["boundary_distance_px"]
        lines.append(
            f"boundary distance (px, {boundary['images']} images with both masks): 95th-percentile "
            f"Hausdorff {interval_text(boundary['hd95'])}, mean surface "
            f"{interval_text(boundary['mean_surface_distance'])}"
        )
    return "\n".join(lines)


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


def boundary_distances(predicted: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """(N, 2) 95th-percentile Hausdorff and mean surface distances (MONAI's, symmetric, in pixels)
    between predicted and true masks (N, 1, H, W); NaN where either mask is empty."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    distances = np.full((len(truth), 2), np.nan)
    with warnings.catch_warnings():  # MONAI's deprecation notes of its own internals
        warnings.simplefilter("ignore")
        for i in np.flatnonzero((predicted.flatten(1).any(dim=1) & truth.flatten(1).any(dim=1)).numpy()):
            # Distances do not change with a crop that keeps both masks whole; distance transforms of the
            # crop cost a fraction of the whole image's.
            rows, columns = np.nonzero((predicted[i, 0] | truth[i, 0]).numpy())
            crop = (slice(max(rows.min() - 2, 0), rows.max() + 3), slice(max(columns.min() - 2, 0), columns.max() + 3))
            pair = predicted[i : i + 1, :, crop[0], crop[1]].float(), truth[i : i + 1, :, crop[0], crop[1]].float()
            distances[i, 0] = float(compute_hausdorff_distance(*pair, percentile=95))
            distances[i, 1] = float(compute_average_surface_distance(*pair, symmetric=True))
    return distances
