"""Scans in, a mask volume and a row of numbers per scan out: a NIfTI volume or a DICOM series is predicted
slice by slice (its axial display slices, datamodules.volumes), and the slices' tumour masks go back into a
volume with exactly the input's shape and affine (a DICOM series': its stack's geometry)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from common.labels import NO_TUMOR
from common.visualization import mask_overlay
from datamodules.volumes import VolumeSlice, display_spacing_mm, from_display, load_scan, read_volume
from inference.predictor import Prediction


def scan_slices(path: str | Path, plane: str = "axial") -> list[str]:
    """The scan's display slices of `plane`, named as the tools read them (VolumeSlice's names), first to last."""
    return [str(VolumeSlice(Path(path), index, plane=plane)) for index in range(len(read_volume(Path(path), plane)))]


def mask_volume(path: str | Path, slice_masks: Sequence[np.ndarray], plane: str = "axial") -> nib.Nifti1Image:
    """The display slices' masks (each rows x columns, in scan_slices' order) as a uint8 volume in the input
    scan's own voxel order, shape and affine: the inverse of read_volume's reorientation."""
    original = load_scan(path)
    canonical = from_display(np.stack([np.asarray(mask, np.uint8) for mask in slice_masks]), plane)  # RAS+ x, y, z
    from_canonical = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.io_orientation(original.affine)
    )
    voxels = nib.orientations.apply_orientation(canonical, from_canonical).astype(np.uint8)
    if voxels.shape != original.shape[:3]:
        raise ValueError(f"{path}: the mask came back {voxels.shape}, the scan is {original.shape[:3]}")
    image = nib.Nifti1Image(voxels, original.affine)
    image.set_qform(original.affine, code=1)
    image.set_sform(original.affine, code=1)
    return image


def scan_summary(path: str | Path, slice_masks: Sequence[np.ndarray], plane: str = "axial") -> dict:
    """scan, slices, tumor_slices, tumor_volume_ml (from the voxel size), the largest tumour cross-section in
    mm^2 and its slice (display order, 0 first)."""
    slice_mm, row_mm, column_mm = display_spacing_mm(path, plane)
    pixel_mm2, voxel_mm3 = row_mm * column_mm, row_mm * column_mm * slice_mm
    areas = np.array([int(np.count_nonzero(mask)) for mask in slice_masks])
    largest = int(np.argmax(areas)) if areas.any() else None
    return {
        "scan": str(path),
        "slices": len(areas),
        "tumor_slices": int(np.count_nonzero(areas)),
        "tumor_volume_ml": round(float(areas.sum()) * voxel_mm3 / 1000, 3),
        "largest_cross_section_mm2": round(float(areas.max()) * pixel_mm2, 1) if largest is not None else 0.0,
        "largest_cross_section_slice": largest,
    }


def montage(
    slices: Sequence[np.ndarray], slice_masks: Sequence[np.ndarray], count: int = 12, columns: int = 4
) -> np.ndarray:
    """The scan's slices with tumour (up to `count`, spread from first to last), each outlined and numbered, in a
    grid: what a person reads in seconds. RGB uint8; the scan's middle slice alone when no slice has a tumour."""
    with_tumour = [index for index, mask in enumerate(slice_masks) if np.any(mask)]
    chosen = with_tumour or [len(slices) // 2]
    chosen = [
        chosen[i] for i in np.unique(np.linspace(0, len(chosen) - 1, min(count, len(chosen))).round().astype(int))
    ]
    tiles = []
    for index in chosen:
        gray = np.asarray(slices[index])
        rgb = np.repeat(gray[:, :, None], 3, axis=2) if gray.ndim == 2 else gray
        tile = mask_overlay(rgb, np.asarray(slice_masks[index], np.uint8))
        cv2.putText(tile, str(index), (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    columns = min(columns, len(tiles))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def mean_probabilities(probabilities: Sequence[dict[str, float]], tumour_slices: Sequence[bool]) -> dict[str, float]:
    """The classifier's probabilities averaged over the slices with tumour, over every slice when none has one."""
    chosen = [p for p, tumour in zip(probabilities, tumour_slices) if tumour] or list(probabilities)
    return {name: float(np.mean([p[name] for p in chosen])) for name in chosen[0]}


def scan_classification(
    probabilities: Sequence[dict[str, float]], tumour_slices: Sequence[bool], unlike_training_data: Sequence[bool]
) -> dict:
    """The classifier's answer for a scan: the tumour type with the highest mean probability over the slices with
    tumour (the segmenter's, else those the classifier calls a tumour) and that mean; the slices unlike the
    training data."""
    row: dict = {"tumor_type": "", "tumor_type_probability": None}
    if any(tumour_slices):
        means = mean_probabilities(probabilities, tumour_slices)
        types = {name: mean for name, mean in means.items() if name != NO_TUMOR}
        row["tumor_type"] = max(types, key=types.get)
        row["tumor_type_probability"] = round(types[row["tumor_type"]], 4)
    return row | {"slices_unlike_training_data": int(np.count_nonzero(unlike_training_data))}


def tumour_slices_of(slices: Sequence[Prediction]) -> list[bool]:
    """Which slices hold a tumour: the segmenter's masks where there is one, else the classifier's calls."""
    if slices[0].tumor_mask is not None:
        return [bool(prediction.tumor_mask.any()) for prediction in slices]
    return [prediction.predicted_class != NO_TUMOR for prediction in slices]


def scan_row(scan: str, slices: Sequence[Prediction], plane: str = "axial") -> dict:
    """A scan's numbers from its slices' predictions, in order (a row of scans.csv; the web page's table): with a
    segmenter scan_summary's, with a classifier scan_classification's, with both the share of slices on which
    the two agree about a tumour."""
    masks = [prediction.tumor_mask for prediction in slices]
    segmented = masks[0] is not None
    row = scan_summary(scan, masks, plane) if segmented else {"scan": str(scan), "slices": len(slices)}
    if slices[0].probabilities:
        unlike = [prediction.unlike_training_data for prediction in slices]
        row |= scan_classification(
            [prediction.probabilities for prediction in slices], tumour_slices_of(slices), unlike
        )
        if segmented:
            row["models_agree"] = round(float(np.mean([prediction.models_agree for prediction in slices])), 3)
    return row
