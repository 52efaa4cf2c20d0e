"""Two evaluations of the same images side by side: each score of the second minus the first,
with a paired bootstrap interval. Both are resampled with the same images, so what the runs have
in common (the hard images) cancels, and a difference smaller than either run's own interval can
still be told from noise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.labels import NO_TUMOR
from common.metrics import segmentation_scores
from evaluation.bootstrap import Statistic, bootstrap_intervals, ratio_of_sums, with_interval
from evaluation.segmentation import PIXEL_COUNTS, detection_statistics, pixel_statistics, stats_of_rows

SEGMENTATION_SCORES = (
    "iou_global",
    "dice_global",
    "iou_per_image",
    "dice_per_image",
    "iou_per_tumor_image",
    "dice_per_tumor_image",
)


def scores_of_rows(rows: list[dict]) -> dict[str, Statistic]:
    """Every score that evaluate.py's per-image rows allow, as a function of resampled image indices:
    accuracy, tumour sensitivity and specificity (classification), IoU, Dice, pixel precision and
    recall and tumour detection (segmentation), tumour recall and precision (boxes). (A segmenter's
    rows may carry a `label` too: the tumour class.)"""
    first, scores = rows[0], {}
    if "predicted" in first:
        # `correct` where the report gives it: a partial label ("tumor") is right for any tumour type
        correct = np.array([row.get("correct", row["label"] == row["predicted"]) for row in rows], dtype=float)
        scores["accuracy"] = lambda indices: correct[indices].mean()
        tumour = np.array([row["label"] != NO_TUMOR for row in rows], dtype=float)
        called_a_tumour = np.array([row["predicted"] != NO_TUMOR for row in rows], dtype=float)
        if tumour.any():
            scores["tumor_sensitivity"] = ratio_of_sums(called_a_tumour * tumour, tumour)
        if not tumour.all():
            scores["tumor_specificity"] = ratio_of_sums((1 - called_a_tumour) * (1 - tumour), 1 - tumour)
    if all(name in first for name in PIXEL_COUNTS):
        stats = stats_of_rows(rows)
        for name in SEGMENTATION_SCORES:
            scores[name] = lambda indices, name=name: segmentation_scores(stats[indices])[name]
        scores |= detection_statistics(stats) | pixel_statistics(stats)
    if "found_tumors" in first:
        found, true, predicted = (
            np.array([row[key] for row in rows], dtype=float)
            for key in ("found_tumors", "true_tumors", "predicted_tumors")
        )
        scores["tumor_recall"] = ratio_of_sums(found, true)
        scores["tumor_precision"] = ratio_of_sums(found, predicted)
    return scores


def path_parts(file: str) -> tuple[str, ...]:
    """A file's path parts below its root's spelling ("/", "..", "."): ("data", "p1", "a.jpg#t1")."""
    parts = Path(os.path.normpath(file)).parts
    while parts and parts[0] in (os.sep, "..", "."):
        parts = parts[1:]
    return parts


def shared_rows(first_rows: list[dict], second_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of the images both reports hold, paired: two rows are one image when the path of one,
    whatever its root's spelling, ends the other's ("../data/p1/a.jpg" and "/home/me/data/p1/a.jpg")."""
    second_parts = [path_parts(row["file"]) for row in second_rows]
    by_path = {parts: index for index, parts in enumerate(second_parts)}
    by_tail: dict[tuple[str, ...], list[int]] = {}
    for index, parts in enumerate(second_parts):
        for start in range(len(parts)):
            by_tail.setdefault(parts[start:], []).append(index)
    pairs = []
    for row in first_rows:
        parts = path_parts(row["file"])
        tails = (parts[start:] for start in range(len(parts)))
        matches = set(by_tail.get(parts, [])) | {by_path[tail] for tail in tails if tail in by_path}
        if len(matches) > 1:
            raise ValueError(f"{row['file']} matches {len(matches)} images of the other report")
        pairs += [(row, second_rows[match]) for match in matches]
    return [first for first, _ in pairs], [second for _, second in pairs]


def rows_in_order(report: dict, rows: list[dict]) -> list[dict]:
    """`report`'s per-image rows in the order of `rows`, which must be of the same images."""
    mine, theirs = shared_rows(rows, report["per_image"])
    if len(mine) != len(rows) or len(report["per_image"]) != len(rows):
        raise ValueError(
            f"the reports cover different images ({len(rows)} and {len(report['per_image'])}, {len(mine)} in both)"
        )
    return theirs


def paired_differences(
    first: dict, second: dict, resamples: int = 1000, seed: int = 0, shared_only: bool = False
) -> dict[str, dict]:
    """For each score both reports allow: its value in each and the difference (second - first)
    with a 95% paired bootstrap interval. The reports must cover the same images, or with
    `shared_only` the scores are of the images both hold."""
    if shared_only:
        first_rows, second_rows = shared_rows(first["per_image"], second["per_image"])
        if not first_rows:
            raise ValueError("the reports share no image")
    else:
        first_rows = first["per_image"]
        second_rows = rows_in_order(second, first_rows)
    first_scores, second_scores = scores_of_rows(first_rows), scores_of_rows(second_rows)
    names = [name for name in first_scores if name in second_scores]
    everything = np.arange(len(first_rows))
    differences = {
        name: (lambda indices, name=name: second_scores[name](indices) - first_scores[name](indices)) for name in names
    }
    intervals = bootstrap_intervals(differences, len(first_rows), resamples, seed)
    return {
        name: {
            "first": float(first_scores[name](everything)),
            "second": float(second_scores[name](everything)),
            "difference": with_interval(differences[name](everything), intervals[name]),
            "images": len(first_rows),
        }
        for name in names
    }


def read_report(path: str | Path) -> dict:
    """evaluate.py's metrics.json, given as the file or its folder."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable evaluate.py report ({type(error).__name__})") from error
    if not report.get("per_image"):
        raise UserError(f"{path}: has no per-image rows; compare reports written by evaluate.py")
    return report


def compare_reports(
    first_path: str | Path, second_path: str | Path, resamples: int = 1000, seed: int = 0, shared_only: bool = False
) -> dict:
    try:
        return paired_differences(read_report(first_path), read_report(second_path), resamples, seed, shared_only)
    except ValueError as error:
        raise UserError(f"{first_path} and {second_path}: {error}") from error


def format_comparison(comparison: dict, first_name: str, second_name: str) -> str:
    width = max(map(len, ["score", *comparison]))
    images = next(iter(comparison.values()))["images"] if comparison else 0
    lines = [
        f"{'score':<{width}} {first_name:>12} {second_name:>12}   difference [95% paired interval], {images} images"
    ]
    for name, entry in comparison.items():
        low, high = entry["difference"]["ci95"]
        lines.append(
            f"{name:<{width}} {entry['first']:>12.4f} {entry['second']:>12.4f}   "
            f"{entry['difference']['value']:+.4f} [{low:+.4f}, {high:+.4f}]"
        )
    return "\n".join(lines)
