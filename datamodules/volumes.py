"""Scans as 2D slices: a NIfTI volume or a DICOM series (datamodules.dicom_series) read in its closest
canonical (RAS+) axes, cut into axial slices shown as radiologists see them (anterior up, the patient's right on
the left, as the 2D training slices are), and windowed to 8 bits so that float, z-scored or 16-bit volumes reach the
models like the 8-bit training slices: the head's darkest voxels black and its median at the training slices'
median gray level (`HEAD_GRAY`), whether the volume holds the skull or only the brain.

A folder of cases (BraTS: `<case>/<sequence>.nii.gz` with a label volume beside them) is a segmentation
and classification source: each sequence's slices with the tumour its sequence shows (labels > 0, the
whole tumour, on FLAIR and T2; the tumour core, labels 1, 3 and 4, on T1 and post-contrast T1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from common.errors import DatasetError, InputImageError
from datamodules.contrast import HEAD_GRAY
from datamodules.dicom_series import is_dicom_series, read_series, split_scan_name

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SLICE_MARK = "@"  # SCAN@INDEX: one display slice of a scan
BLACK_PERCENTILE = 0.5  # of the head's voxels: this one and darker are black
# A window from percentiles instead (0.5-99.5 to 0-255) put a skull-stripped brain's median near 130, twice as bright
# as any training brain, and neither bundled model found the BraTS sample's tumour (docs/studies/scans.md).
LABEL_NAME = re.compile(r"(^|[_\-.])(seg|label|labels|ot|otmulticlass|truth|gt)([_\-.]|$)", re.IGNORECASE)
BRAIN_MASK_NAME = re.compile(r"brain_?mask", re.IGNORECASE)
CORE_LABELS = (1, 3, 4)  # BraTS necrosis, non-enhancing and enhancing tumour: what T1 contrast shows
MIN_HEAD_SHARE = 0.1  # of the largest slice's head area: slices with less are the volume's ends


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def is_scan(path: str | Path) -> bool:
    """A NIfTI file or a DICOM series (a folder of its slices, or FOLDER#SERIES_UID)."""
    return is_nifti(Path(path)) or is_dicom_series(path)


def scan_stem(path: str | Path) -> str:
    """A scan's name for its output files: the NIfTI file's stem, the series' folder (and UID)."""
    if is_nifti(Path(path)):
        return nifti_stem(Path(path))
    folder, uid = split_scan_name(path)
    return folder.name if uid is None else f"{folder.name}_{uid}"


def load_scan(path: str | Path) -> nib.Nifti1Image:
    """A scan as one nibabel image with its affine: the NIfTI file, or the DICOM series stacked."""
    if is_nifti(Path(path)):
        try:
            return nib.load(str(path))
        except Exception as error:  # nibabel raises many kinds for a bad or truncated file
            raise InputImageError(f"{path}: not a readable NIfTI volume ({error})") from None
    return read_series(path)


def sequence_of(path: Path) -> str:
    """The MRI sequence a volume's file name says (flair, t2, t1c, t1), '' when it says none."""
    name = nifti_stem(path).lower()
    for sequence, pattern in (("flair", "flair"), ("t1c", r"t1[_\-]?(c|ce|gd|post)"), ("t2", "t2"), ("t1", "t1")):
        if re.search(pattern, name):
            return sequence
    return ""


def tumour_labels_of(sequence: str) -> tuple[int, ...] | None:
    """The label values of the tumour a sequence shows; None: every nonzero label."""
    return CORE_LABELS if sequence in ("t1", "t1c") else None


# How each plane's display slices come from the canonical (RAS+) voxels data[x, y, z] (x runs from the patient's
# left to right, y posterior to anterior, z inferior to superior): the axes to flip, then the order (slice, row,
# column). Radiological views: axial and coronal with the patient's right on the left, axial
# anterior up, coronal and sagittal superior up, sagittal anterior on the left.
PLANES = {"axial": ((0, 1), (2, 1, 0)), "coronal": ((0, 2), (1, 2, 0)), "sagittal": ((1, 2), (0, 2, 1))}


def to_display(canonical: np.ndarray, plane: str = "axial") -> np.ndarray:
    flips, order = PLANES[plane]
    return np.ascontiguousarray(np.flip(canonical, flips).transpose(order))


def from_display(display: np.ndarray, plane: str = "axial") -> np.ndarray:
    """The inverse of to_display: display slices (slice, row, column) back to canonical voxels (x, y, z)."""
    flips, order = PLANES[plane]
    return np.flip(display.transpose(np.argsort(order)), flips)


@lru_cache(maxsize=4)  # a volume's slices are read one by one, in threads
def read_volume(path: Path, plane: str = "axial") -> np.ndarray:
    """A 3D volume's voxels (float32) in its closest canonical axes (RAS+), as display slices of `plane`
    (slices, rows, columns); axial: rows anterior to posterior, columns patient right to left."""
    image = load_scan(path)
    try:
        data = np.asarray(nib.as_closest_canonical(image).dataobj, dtype=np.float32)
    except Exception as error:  # nibabel reads lazily: a truncated .nii.gz fails here
        raise InputImageError(f"{path}: not a readable NIfTI volume ({error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(f"{path}: a {data.ndim}D image; expected a 3D volume")
    return to_display(data, plane)


def display_spacing_mm(path: str | Path, plane: str = "axial") -> tuple[float, float, float]:
    """The display slices' voxel size in mm: (slice step, row, column), from the canonical x, y, z voxel sizes."""
    zooms = nib.as_closest_canonical(load_scan(path)).header.get_zooms()[:3]
    return tuple(float(zooms[axis]) for axis in PLANES[plane][1])


def window_to_uint8(volume: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """Gray levels 0-255, linear in the volume's values: the head's (`inside`, else all voxels) darkest
    `BLACK_PERCENTILE` black, its median at `HEAD_GRAY`, the air black: the per-scan window that makes any
    scanner's units look like an 8-bit training slice."""
    region = volume[inside] if inside is not None and inside.any() else volume
    low, median = np.percentile(region, (BLACK_PERCENTILE, 50))
    scaled = (volume - low) / max(float(median - low), 1e-6)
    out = np.clip(np.round(scaled * HEAD_GRAY), 0, 255).astype(np.uint8)
    if inside is not None:
        out[~inside] = 0
    return out


@lru_cache(maxsize=4)
def read_slices(path: Path, brain_mask: Path | None = None, plane: str = "axial") -> np.ndarray:
    """A volume as uint8 display slices (slices, rows, columns), windowed inside its brain mask or head."""
    volume = read_volume(path, plane)
    inside = head_of(volume, brain_mask, plane)
    if inside.shape != volume.shape:
        raise DatasetError(f"{brain_mask}: shape {inside.shape} differs from {path.name}'s {volume.shape}")
    return window_to_uint8(volume, inside)


def head_of(volume: np.ndarray, brain_mask: Path | None = None, plane: str = "axial") -> np.ndarray:
    """The voxels inside the head: the brain mask's where there is one, else those unlike the corner voxel
    (air, or what a skull-stripped volume holds outside the brain: 0, or its minimum once z-scored)."""
    return read_volume(brain_mask, plane) > 0 if brain_mask else volume != volume.flat[0]


@dataclass(frozen=True)
class VolumeSlice:
    """One display slice of a scan (`read_slices`); reports name it SCAN@INDEX (axial) or SCAN@PLANE:INDEX."""

    path: Path
    index: int
    brain_mask: Path | None = None
    plane: str = "axial"

    def pixels(self) -> np.ndarray:
        return read_slices(self.path, self.brain_mask, self.plane)[self.index]

    def __str__(self) -> str:
        where = str(self.index) if self.plane == "axial" else f"{self.plane}:{self.index}"
        return f"{self.path}{SLICE_MARK}{where}"


@dataclass(frozen=True)
class LabelSlice:
    """The tumour of one display slice of a label volume: the labels in `labels` (None: any nonzero)."""

    path: Path
    index: int
    labels: tuple[int, ...] | None = None

    def tumour(self) -> np.ndarray:
        values = read_volume(self.path)[self.index]
        return values > 0 if self.labels is None else np.isin(np.rint(values), self.labels)

    def draw(self, height: int, width: int) -> np.ndarray:
        tumour = self.tumour()
        if tumour.shape != (height, width):
            raise DatasetError(f"{self.path}: slice {self.index} is {tumour.shape}, its image {(height, width)}")
        return tumour.astype(np.uint8)


def case_volumes(folder: Path) -> tuple[list[Path], Path | None, Path | None]:
    """A case folder's image volumes, its label volume and its brain mask (None where it has none)."""
    volumes = sorted(path for path in folder.iterdir() if path.is_file() and is_nifti(path))
    labels = [path for path in volumes if LABEL_NAME.search(nifti_stem(path))]
    masks = [path for path in volumes if BRAIN_MASK_NAME.search(nifti_stem(path))]
    if len(labels) > 1:
        raise DatasetError(f"{folder}: several label volumes ({', '.join(path.name for path in labels)})")
    images = [path for path in volumes if path not in labels and path not in masks]
    return images, (labels[0] if labels else None), (masks[0] if masks else None)


def case_folders(root: Path) -> list[Path]:
    """`root` itself when it holds NIfTI volumes, else its sub-folders that do."""
    folders = [root, *sorted(path for path in root.iterdir() if path.is_dir())]
    return [folder for folder in folders if any(is_nifti(path) for path in folder.iterdir() if path.is_file())]


def volume_slices(root: Path) -> list[tuple[VolumeSlice, LabelSlice | None, str, str]]:
    """Every image volume's slices with brain in them (not the volume's empty ends), with the tumour its
    sequence shows where the case has a label volume: (slice, tumour, sequence, case)."""
    slices = []
    for folder in case_folders(root):
        images, label, brain_mask = case_volumes(folder)
        for path in images:
            volume = read_volume(path)
            if label is not None and read_volume(label).shape != volume.shape:
                raise DatasetError(f"{label}: shape differs from {path.name}'s {volume.shape}")
            areas = head_of(volume, brain_mask).sum(axis=(1, 2))
            sequence = sequence_of(path)
            for index in np.flatnonzero(areas >= MIN_HEAD_SHARE * max(int(areas.max()), 1)):
                tumour = None if label is None else LabelSlice(label, int(index), tumour_labels_of(sequence))
                slices.append((VolumeSlice(path, int(index), brain_mask), tumour, sequence, folder.name))
    return slices
