"""Which part of an evaluated set each image belongs to: its source (one of several data roots) and,
for a slice read from a multi-sequence file (FILE#SEQUENCE) or a NIfTI volume (FILE@INDEX), its MRI sequence. Every report gives its
numbers for each part as well as pooled: a model that holds up on one source or sequence may fail another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datamodules.images import ChannelOf, ImageSource, parse_source
from datamodules.nifti import VolumeSlice, sequence_of


def parts_of(
    files: Sequence[str], source_of: np.ndarray, source_names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Masks over `files`: {"per_source": {root: mask}} when there are several sources, and
    {"per_sequence": {sequence: mask}} when some files name one; parts with no image are left out."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    if len(set(source_of.tolist())) > 1:
        parts["per_source"] = {str(name): source_of == index for index, name in enumerate(source_names)}
    sequences = np.array([sequence_named(parse_source(file)) for file in files])
    if (sequences != "").any():
        parts["per_sequence"] = {name: sequences == name for name in sorted(set(sequences)) if name}
    return {key: {name: mask for name, mask in masks.items() if mask.any()} for key, masks in parts.items()}


def sequence_named(source: ImageSource) -> str:
    """The MRI sequence an image source names: an LGG slice's channel, a NIfTI volume's file name; else ''."""
    if isinstance(source, ChannelOf):
        return source.sequence
    return sequence_of(source.path) if isinstance(source, VolumeSlice) else ""
