"""DICOM slices as the 8-bit images the models were trained on.

Kaggle's slices are 8-bit renderings of MR images as a viewer showed them, so a DICOM file is
rendered the same way: stored values through the modality rescale (slope, intercept), then the
file's own display window (VOI LUT or window centre/width; without one, a robust window from the
1st to the 99th percentile), inverted for MONOCHROME1, scaled to 0-255. Only single-frame MR
slices are accepted: a CT, an X-ray or a multi-frame series is refused with a message."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputImageError

DICOM_SUFFIXES = (".dcm", ".dicom")
PERCENTILE_WINDOW = (1.0, 99.0)  # of the slice's values, when the file has no display window


def first_value(value) -> float:
    """Window centre and width may hold several values (alternative windows): the first is the default."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1), to [0, 1]."""
    width = max(width, 1.0)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def to_unit_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def read_dicom(path: str | Path, channels: int) -> np.ndarray:
    """An HxWx`channels` uint8 rendering of a single-frame MR DICOM slice."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as error:
        raise InputImageError(f"{path}: not a readable DICOM file ({str(error).splitlines()[0]})") from error
    modality = str(dataset.get("Modality", "MR"))
    if modality != "MR":
        raise InputImageError(f"{path}: a {modality} image; the models read MR slices only (DICOM modality MR)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputImageError(f"{path}: a multi-frame DICOM ({frames} frames); give single slices (one frame per file)")
    if "PixelData" not in dataset:
        raise InputImageError(f"{path}: a DICOM file without pixel data")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many kinds for unsupported encodings
        raise InputImageError(
            f"{path}: cannot decode its pixels ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if stored.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise InputImageError(
            f"{path}: a {photometric} image of shape {stored.shape}; MR slices are single-channel "
            "(MONOCHROME1 or MONOCHROME2)"
        )
    values = apply_modality_lut(stored, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset:
        shown = apply_voi_lut(values, dataset).astype(np.float64)
        unit = to_unit_range(shown, shown.min(), shown.max())
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        unit = linear_window(values, first_value(dataset.WindowCenter), first_value(dataset.WindowWidth))
    else:
        unit = to_unit_range(values, *np.percentile(values, PERCENTILE_WINDOW))
    if photometric == "MONOCHROME1":  # low values are white
        unit = 1.0 - unit
    gray = np.round(unit * 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], channels, axis=2)
