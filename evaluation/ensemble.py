"""A classifier ensemble scored from its members' evaluate.py reports on the same images: each
image's class probabilities averaged over the members, and the class they make most likely.
It measures what averaging several trained classifiers would give before any model file holds
more than one network; its report compares with any other (evaluation.compare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import UserError
from evaluation.bootstrap import bootstrap_intervals, with_interval
from evaluation.compare import read_report, rows_in_order, scores_of_rows


def averaged_report(reports: list[dict], names: list[str], resamples: int = 1000, seed: int = 0) -> dict:
    """The ensemble's per-image rows (label, predicted, probabilities) and its accuracy with a 95%
    bootstrap interval, beside each member's on the same resamples."""
    if len(reports) < 2:
        raise ValueError("an ensemble needs at least two reports")
    if any("probabilities" not in report["per_image"][0] for report in reports):
        raise ValueError("only classifier reports (per-image probabilities) can be averaged")
    first_rows = reports[0]["per_image"]
    members = [first_rows] + [rows_in_order(report, first_rows) for report in reports[1:]]
    per_image = []
    for rows in zip(*members):
        classes = rows[0]["probabilities"]
        mean = {name: float(np.mean([row["probabilities"][name] for row in rows])) for name in classes}
        predicted = max(mean, key=mean.get)
        per_image.append(
            {"file": rows[0]["file"], "label": rows[0]["label"], "predicted": predicted, "probabilities": mean}
        )
    accuracies = {"ensemble": scores_of_rows(per_image)["accuracy"]}
    accuracies |= {name: scores_of_rows(rows)["accuracy"] for name, rows in zip(names, members)}
    intervals = bootstrap_intervals(accuracies, len(per_image), resamples, seed)
    everything = np.arange(len(per_image))
    return {
        "members": names,
        "accuracy": {name: with_interval(score(everything), intervals[name]) for name, score in accuracies.items()},
        "per_image": per_image,
    }


def ensemble_reports(paths: list[str | Path], resamples: int = 1000, seed: int = 0) -> dict:
    """`averaged_report` of evaluate.py reports given as files or folders, each member named by its path."""
    try:
        return averaged_report([read_report(path) for path in paths], [str(path) for path in paths], resamples, seed)
    except ValueError as error:
        raise UserError(f"{', '.join(map(str, paths))}: {error}") from error
