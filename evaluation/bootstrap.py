"""Percentile-bootstrap confidence intervals over the evaluated images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], float]  # indices of the images in one resample -> a number


def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray) -> Statistic:
    """A pooled rate over the resampled images (NaN where the denominator sums to 0)."""
    return lambda indices: (
        numerator[indices].sum() / denominator[indices].sum() if denominator[indices].sum() else np.nan
    )


def bootstrap_intervals(
    statistics: dict[str, Statistic],
    size: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    joint: Callable[[np.ndarray], dict[str, float]] | None = None,
) -> dict[str, tuple[float, float]]:
    """A `level` interval for each statistic, from the same seeded resamples of `size` images
    drawn with replacement. Resamples where a statistic is undefined (NaN, e.g. a recall of a
    class that the resample lacks) are left out of that statistic's interval. `joint` computes
    several statistics in one pass over a resample (their names are its keys)."""
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, size, size) for _ in range(resamples)]
    tails = [(1 - level) / 2, (1 + level) / 2]
    intervals = {}
    columns = {name: [statistic(indices) for indices in samples] for name, statistic in statistics.items()}
    if joint is not None:
        rows = [joint(indices) for indices in samples]
        columns |= {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}
    for name, column in columns.items():
        values = np.array(column, dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, tails) if len(values) else (np.nan, np.nan)
        intervals[name] = (float(low), float(high))
    return intervals


def with_interval(value: float, interval: tuple[float, float]) -> dict:
    """The JSON form of a number and its interval."""
    return {"value": float(value), "ci95": [round(interval[0], 6), round(interval[1], 6)]}


def interval_text(entry: dict) -> str:
    """A value and its interval; "n/a" for an undefined one (a class without images or predictions)."""
    low, high = entry["ci95"]
    if not np.isfinite(entry["value"]):
        return "n/a"
    return f"{entry['value']:.4f} [{low:.3f}, {high:.3f}]"
