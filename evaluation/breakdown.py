"""Which part of an evaluated set each image belongs to: its source (one of several data roots) and,
for a slice read from a multi-sequence file (FILE#SEQUENCE), its MRI sequence. Every report gives its
numbers for each part as well as pooled: a model that holds up on one source or sequence may fail another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datamodules.images import ChannelOf, parse_source


def parts_of(
    files: Sequence[str], source_of: np.ndarray, source_names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Masks over `files`: {"per_source": {root: mask}} when there are several sources, and
    {"per_sequence": {sequence: mask}} when some files name one; parts with no image are left out."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    if len(set(source_of.tolist())) > 1:
        parts["per_source"] = {str(name): source_of == index for index, name in enumerate(source_names)}
    sources = [parse_source(file) for file in files]
    sequences = np.array([source.sequence if isinstance(source, ChannelOf) else "" for source in sources])
    if (sequences != "").any():
        parts["per_sequence"] = {name: sequences == name for name in sorted(set(sequences)) if name}
    return {key: {name: mask for name, mask in masks.items() if mask.any()} for key, masks in parts.items()}
