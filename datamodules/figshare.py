"""The original figshare brain tumour dataset (Cheng et al.): one MATLAB v7.3 file per slice.

A v7.3 `.mat` file is HDF5 (scipy.io.loadmat refuses it), read here with h5py: struct `cjdata`
with `image` (int16), `tumorMask` (binary), `label` (1 meningioma, 2 glioma, 3 pituitary) and
`PID` (the patient id as character codes). MATLAB stores arrays column-major, so h5py returns
them transposed; scalars come as 1x1 doubles."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.errors import DatasetError, InputImageError

FIGSHARE_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
METADATA_FILE = "metadata.csv"  # the table of the dataset's copies: image,mask,label,patient_id


def read_metadata(root: Path, required: tuple[str, ...] = ("image",)) -> list[dict[str, str]]:
    """The rows of ROOT/metadata.csv, with a one-line error when a required column is missing."""
    path = Path(root) / METADATA_FILE
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [column for column in required if column not in (rows[0] if rows else {})]
    if missing:
        raise DatasetError(f"{path}: no {', '.join(map(repr, missing))} column (expected image,mask,label,patient_id)")
    return rows


@dataclass
class FigshareSlice:
    image: np.ndarray  # HxW uint8, the slice's values stretched over 0-255 (as the dataset's Kaggle copies are)
    mask: np.ndarray  # HxW uint8 {0, 1}
    label: str
    patient_id: str


def figshare_label_and_patient(path: Path) -> tuple[str, str] | None:
    """A slice's class and patient id, read without its pixels; None for a .mat file that is not a
    slice (the download also has cvind.mat, the fold indices)."""
    try:
        with h5py.File(path, "r") as handle:
            if "cjdata" not in handle or not {"label", "PID"} <= set(handle["cjdata"]):
                return None
            label = int(np.asarray(handle["cjdata"]["label"]).reshape(-1)[0])
            patient_id = "".join(chr(int(code)) for code in np.asarray(handle["cjdata"]["PID"]).reshape(-1))
    except OSError:
        return None
    return FIGSHARE_LABELS.get(label, "tumor"), patient_id


def read_figshare_slice(path: str | Path) -> FigshareSlice:
    """One slice of the original download, with a one-line error for a file that is not one."""
    try:
        with h5py.File(path, "r") as handle:
            if "cjdata" not in handle:
                raise InputImageError(f"{path}: a .mat file without the figshare struct 'cjdata'")
            data = handle["cjdata"]
            missing = [key for key in ("image", "tumorMask", "label", "PID") if key not in data]
            if missing:
                raise InputImageError(f"{path}: cjdata has no {', '.join(missing)}")
            image = np.asarray(data["image"], dtype=np.float64).T
            mask = (np.asarray(data["tumorMask"]).T > 0).astype(np.uint8)
            label = int(np.asarray(data["label"]).reshape(-1)[0])
            patient_id = "".join(chr(int(code)) for code in np.asarray(data["PID"]).reshape(-1))
    except OSError as error:
        raise InputImageError(f"{path}: not a MATLAB v7.3 (HDF5) file ({error})") from error
    if image.shape != mask.shape:
        raise InputImageError(f"{path}: image {image.shape} and tumorMask {mask.shape} differ in size")
    if label not in FIGSHARE_LABELS:
        raise InputImageError(f"{path}: label {label} is none of {sorted(FIGSHARE_LABELS)}")
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) * 255 if high > low else np.zeros_like(image)
    return FigshareSlice(np.round(scaled).astype(np.uint8), mask, FIGSHARE_LABELS[label], patient_id)
