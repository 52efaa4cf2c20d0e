"""A segmenter scored per scan, as a radiologist reads a volume: Dice of the whole mask volume, the tumour volume
in mL (predicted against true, and the relative error), the slices with tumour found, and the 95th-percentile
Hausdorff distance in mm (MONAI's, in 3D with the voxel spacing). The slices' masks come stacked in the scan's
slice order, at the resolution the model saw them; `spacing_mm` is that grid's (slice step, row, column)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class ScanMasks:
    """One scan's predicted and true masks (slices, rows, columns) and the spacing of that grid in mm."""

    scan: str
    predicted: np.ndarray
    truth: np.ndarray
    spacing_mm: tuple[float, float, float]


def scan_scores(masks: ScanMasks) -> dict:
    """The row of one scan (None where a number is undefined: Dice with no tumour in either, the volume error with
    no true tumour, HD95 with either mask empty)."""
    predicted, truth = masks.predicted.astype(bool), masks.truth.astype(bool)
    voxel_ml = float(np.prod(masks.spacing_mm)) / 1000
    overlap, sizes = int((predicted & truth).sum()), int(predicted.sum()) + int(truth.sum())
    true_ml, predicted_ml = float(truth.sum()) * voxel_ml, float(predicted.sum()) * voxel_ml
    tumour_slices = truth.any(axis=(1, 2))
    return {
        "scan": masks.scan,
        "dice": 2 * overlap / sizes if sizes else None,
        "true_volume_ml": round(true_ml, 3),
        "predicted_volume_ml": round(predicted_ml, 3),
        "volume_error": (predicted_ml - true_ml) / true_ml if true_ml else None,
        "hd95_mm": hausdorff_95_mm(predicted, truth, masks.spacing_mm),
        "tumour_slices": int(tumour_slices.sum()),
        "tumour_slices_found": int((tumour_slices & predicted.any(axis=(1, 2))).sum()),
        "healthy_slices_given_a_tumour": int((~tumour_slices & predicted.any(axis=(1, 2))).sum()),
    }


def hausdorff_95_mm(predicted: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float]) -> float | None:
    if not predicted.any() or not truth.any():
        return None
    import torch
    from monai.metrics import compute_hausdorff_distance

    pair = (torch.from_numpy(mask[None, None].astype(np.float32)) for mask in (predicted, truth))
    with warnings.catch_warnings():  # MONAI's deprecation notes of its own internals
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(*pair, percentile=95, spacing=list(spacing_mm)))


def scans_report(rows: list[dict], dice_goal: float, volume_goal: float) -> dict:
    """The per-scan rows with their means and how many scans reach the goals (Dice >= dice_goal, volume within
    volume_goal of the truth)."""
    dice = np.array([np.nan if row["dice"] is None else row["dice"] for row in rows])
    error = np.array([np.nan if row["volume_error"] is None else row["volume_error"] for row in rows])
    return {
        "scans": len(rows),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else None,
        "dice_goal": dice_goal,
        "scans_reaching_the_dice_goal": int((dice >= dice_goal).sum()),
        "volume_goal": volume_goal,
        "scans_with_volume_within_the_goal": int((np.abs(error) <= volume_goal).sum()),
        "per_scan": rows,
    }


def format_scans_report(report: dict) -> str:
    lines = [
        f"Per scan ({report['scans']}): Dice >= {report['dice_goal']} in {report['scans_reaching_the_dice_goal']}, "
        f"volume within {report['volume_goal']:.0%} in {report['scans_with_volume_within_the_goal']}",
        f"  {'scan':<48} {'Dice':>6} {'true mL':>8} {'pred. mL':>9} {'error':>7} {'HD95 mm':>8} {'found':>8}",
    ]

    def number(value: float | None, spec: str, width: int) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:{spec}}"

    for row in report["per_scan"]:
        name = row["scan"] if len(row["scan"]) <= 48 else "..." + row["scan"][-45:]
        lines.append(
            f"  {name:<48} {number(row['dice'], '>6.3f', 6)} {row['true_volume_ml']:>8.1f} "
            f"{row['predicted_volume_ml']:>9.1f} {number(row['volume_error'], '>+7.0%', 7)} "
            f"{number(row['hd95_mm'], '>8.1f', 8)} {row['tumour_slices_found']:>3}/{row['tumour_slices']:<4}"
        )
    return "\n".join(lines)
