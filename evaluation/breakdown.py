"""Which part of an evaluated set each image belongs to: its source (one of several data roots) and its MRI
sequence where the data names one. Every report gives its numbers for each part as well as pooled: a model
that holds up on one source or sequence may fail another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parts_of(
    source_of: np.ndarray, source_names: Sequence[str], sequences: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Masks over the images: {"per_source": {root: mask}} when there are several sources, and
    {"per_sequence": {sequence: mask}} when some images name one ('' where none); parts with no image are
    left out."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    if len(set(source_of.tolist())) > 1:
        parts["per_source"] = {str(name): source_of == index for index, name in enumerate(source_names)}
    sequences = np.asarray(sequences, dtype=str)
    if (sequences != "").any():
        parts["per_sequence"] = {name: sequences == name for name in sorted(set(sequences)) if name}
    return {key: {name: mask for name, mask in masks.items() if mask.any()} for key, masks in parts.items()}
