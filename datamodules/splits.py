"""Leakage-safe validation splits: seeded, stratified by class, and never splitting a group
(a patient's slices, the copies of one image) between training and validation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split that keeps each class's share and never puts one group on both sides."""
    rng = np.random.default_rng(seed)
    group_ids, first_member = np.unique(groups, return_index=True)
    group_labels = labels[first_member]
    val_groups: list[int] = []
    for label in np.unique(labels):
        candidates = group_ids[group_labels == label]
        rng.shuffle(candidates)
        target = round(val_fraction * np.sum(labels == label))
        taken = 0
        for group in candidates:
            if taken >= target:
                break
            val_groups.append(group)
            taken += int(np.sum(groups == group))
    is_val = np.isin(groups, val_groups)
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


def same_patient(patient_id: str) -> str:
    """The patient behind an id: figshare ids that differ only in a trailing letter (MR024780B,
    MR024780G) are one patient."""
    return re.sub(r"(?<=\d)[A-Za-z]$", "", patient_id.strip())


def union_groups(count: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Group ids of `count` items joined by `pairs` (union-find; an item's id is its group's root)."""
    parent = np.arange(count)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    return np.array([find(i) for i in range(count)])


def merged_groups(*groupings: Sequence) -> np.ndarray:
    """Group ids such that items sharing a value in any of the groupings share a group
    (None values share nothing)."""

    def pairs() -> Iterator[tuple[int, int]]:
        for grouping in groupings:
            first: dict = {}
            for i, value in enumerate(grouping):
                if value is not None:
                    yield i, first.setdefault(value, i)

    return union_groups(len(groupings[0]), pairs())
