"""DICOM series as volumes: a folder's slices grouped by SeriesInstanceUID, ordered by their position along the
slice normal (ImagePositionPatient, not the file names or InstanceNumber, which scanners and anonymisers number
freely), the modality rescale applied, and the geometry of the slices as a NIfTI affine (RAS), so that a series
is read, cut and written back exactly as a NIfTI volume is (datamodules.volumes).

MONAI's PydicomReader stacks a folder by InstanceNumber and warns on gaps and mixed orientations; a tool that
measures tumour volumes in mL has to refuse those, so the few lines of geometry are written here (the affine
formula of nibabel's DICOM orientation notes). A scan is named FOLDER when the folder holds one series, and
FOLDER#SERIES_UID for each of several."""

from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from common.errors import InputImageError
from datamodules.dicom import DICOM_SUFFIXES

SERIES_MARK = "#"  # FOLDER#SERIES_UID: one series of a folder holding several
MIN_SLICES = 8  # fewer slices, or a narrower field of view, is no brain scan
MIN_FIELD_OF_VIEW_MM = 100.0
MAX_UNZIPPED_MB = 2000  # a zip of a series unpacks to at most this: a zip bomb is refused, not unpacked
GAP_TOLERANCE = 0.25  # a step more than 25% off the series' usual slice step is a missing or extra slice
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by its suffix, or a suffix-less file with the DICM preamble (as scanners export them)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and is_dicom_file(path))


def split_scan_name(scan: str | Path) -> tuple[Path, str | None]:
    """FOLDER#SERIES_UID -> (FOLDER, SERIES_UID); FOLDER -> (FOLDER, None)."""
    text = str(scan)
    folder, mark, uid = text.rpartition(SERIES_MARK)
    if mark and uid and all(part.isdigit() for part in uid.split(".")) and not Path(text).exists():
        return Path(folder), uid
    return Path(text), None


def is_dicom_series(path: str | Path) -> bool:
    folder, uid = split_scan_name(path)
    return uid is not None or (folder.is_dir() and any(is_dicom_file(p) for p in folder.iterdir() if p.is_file()))


def series_in(files: list[Path]) -> dict[str, list[Path]]:
    """The files of each SeriesInstanceUID (headers only; files that are not readable DICOM are left out)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, EOFError):
            continue
        series[str(header.get("SeriesInstanceUID", ""))].append(path)
    return dict(series)


def scans_in(folder: Path) -> tuple[list[str], list[Path]]:
    """The DICOM series of two or more slices under a folder, as scan names (the series' own folder, or
    FOLDER#SERIES_UID where its folder holds others too), and the files of one-slice series or of none: 2D
    slices."""
    groups = series_in(dicom_files(folder))
    singles = [path for uid, files in groups.items() for path in files if len(files) == 1 or not uid]
    groups = {uid: files for uid, files in groups.items() if uid}
    homes = {uid: Path(os.path.commonpath(files)) if len(files) > 1 else files[0] for uid, files in groups.items()}
    scans = []
    for uid in sorted(uid for uid, files in groups.items() if len(files) > 1):
        shared = any(other != uid and homes[uid] in (home, *home.parents) for other, home in homes.items())
        scans.append(f"{homes[uid]}{SERIES_MARK}{uid}" if shared else str(homes[uid]))
    return scans, sorted(singles)


def unzip_series(path: Path, folder: Path) -> list[str]:
    """The DICOM series (scans_in) of a zip file, unpacked into `folder` (as the web page takes a series)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            if sum(member.file_size for member in members) > MAX_UNZIPPED_MB * 2**20:
                raise InputImageError(f"{path}: unpacks to more than {MAX_UNZIPPED_MB} MB")
            for index, member in enumerate(members):  # flat, by index: names in the archive never become paths
                (folder / f"{index:05d}.dcm").write_bytes(archive.read(member))
    except zipfile.BadZipFile as error:
        raise InputImageError(f"{path}: not a readable zip file ({error})") from None
    series, _ = scans_in(folder)
    if not series:
        raise InputImageError(f"{path}: no DICOM series of two or more slices in it")
    return series


def series_slices(scan: str | Path) -> list:
    """The series' slices (pydicom datasets) ordered along the slice normal, checked to be one even stack."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder, uid = split_scan_name(scan)
    if not folder.is_dir():
        raise InputImageError(f"{folder}: no such folder of DICOM slices")
    groups = {key: files for key, files in series_in(dicom_files(folder)).items() if key}  # files without a
    # series UID are 2D slices (scans_in)
    if uid is None and len(groups) > 1:
        raise InputImageError(f"{folder}: {len(groups)} DICOM series; give one as {folder}{SERIES_MARK}SERIES_UID")
    files = groups.get(uid, []) if uid is not None else next(iter(groups.values()), [])
    if not files:
        raise InputImageError(f"{scan}: no DICOM slices of this series")
    slices = []
    for path in files:
        try:
            slices.append((path, pydicom.dcmread(path)))
        except (InvalidDicomError, OSError, EOFError) as error:
            raise InputImageError(f"{path}: not a readable DICOM file ({str(error).splitlines()[0]})") from None
    for path, dataset in slices:
        check_mr_slice(path, dataset)
    orientations = {tuple(np.round(np.asarray(d.ImageOrientationPatient, float), 4)) for _, d in slices}
    if len(orientations) > 1:
        raise InputImageError(
            f"{scan}: slices in {len(orientations)} orientations (ImageOrientationPatient); one series is one stack"
        )
    normal = slice_normal(slices[0][1])
    slices.sort(key=lambda item: float(np.dot(normal, np.asarray(item[1].ImagePositionPatient, float))))
    datasets = [dataset for _, dataset in slices]
    check_stack(scan, datasets, np.array([np.dot(normal, d.ImagePositionPatient) for d in datasets]))
    return datasets


def slice_directions(dataset) -> tuple[np.ndarray, np.ndarray]:
    """The directions (LPS) in which a slice's rows and its columns run."""
    row_direction, column_direction = np.asarray(dataset.ImageOrientationPatient, float).reshape(2, 3)
    return row_direction, column_direction


def slice_normal(dataset) -> np.ndarray:
    return np.cross(*slice_directions(dataset))


@lru_cache(maxsize=4)
def read_series(scan: str | Path) -> nib.Nifti1Image:
    """A DICOM series as a float32 volume (columns, rows, slices) with its RAS affine, in mm."""
    from pydicom.pixels import apply_modality_lut

    slices = series_slices(scan)
    volume = np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float32).T for d in slices], axis=-1)
    row_direction, column_direction = slice_directions(slices[0])
    row_spacing, column_spacing = (float(value) for value in slices[0].PixelSpacing)
    first, last = (np.asarray(d.ImagePositionPatient, float) for d in (slices[0], slices[-1]))
    affine = np.eye(4)
    # pixel_array[i, j] is row i, column j; the volume holds it transposed, (j, i): x runs along a row.
    affine[:3, 0] = row_direction * column_spacing
    affine[:3, 1] = column_direction * row_spacing
    affine[:3, 2] = (last - first) / (len(slices) - 1)
    affine[:3, 3] = first
    image = nib.Nifti1Image(volume, LPS_TO_RAS @ affine)
    image.set_qform(image.affine, code=1)
    return image


def check_mr_slice(path: Path, dataset) -> None:
    modality = str(dataset.get("Modality", "MR"))
    if modality != "MR":
        raise InputImageError(f"{path}: a {modality} image; the models read MR scans only (DICOM modality MR)")
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise InputImageError(f"{path}: a multi-frame DICOM; give the series as single-frame slices")
    for element in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
        if element not in dataset:
            raise InputImageError(f"{path}: no {element}, so its place in the series is unknown")


def check_stack(scan: str | Path, slices: list, distances: np.ndarray) -> None:
    """Refuse what would give wrong millimetres: too few slices, a narrow field of view, slices of other sizes,
    two slices at one position, and gaps (a missing slice)."""
    first = slices[0]
    field_of_view = min(first.Rows * float(first.PixelSpacing[0]), first.Columns * float(first.PixelSpacing[1]))
    if len(slices) < MIN_SLICES or field_of_view < MIN_FIELD_OF_VIEW_MM:
        raise InputImageError(
            f"{scan}: {len(slices)} slices over a {field_of_view:.0f} mm field of view; too small to be a brain "
            f"scan (at least {MIN_SLICES} slices and {MIN_FIELD_OF_VIEW_MM:.0f} mm)"
        )
    sizes = {(d.Rows, d.Columns) for d in slices}
    if len(sizes) > 1:
        raise InputImageError(f"{scan}: slices of {len(sizes)} sizes {sorted(sizes)}; one series is one stack")
    steps = np.diff(distances)
    if steps.min() < 1e-3:
        raise InputImageError(f"{scan}: two slices at one position; two series with one SeriesInstanceUID?")
    step = float(np.median(steps))
    off = np.flatnonzero(np.abs(steps - step) > GAP_TOLERANCE * step)
    if len(off):
        where = float(distances[off[0]])
        raise InputImageError(
            f"{scan}: {len(off)} uneven slice steps (the first after {where:.1f} mm: "
            f"{float(steps[off[0]]):.2f} mm against {step:.2f} mm); a slice missing?"
        )
