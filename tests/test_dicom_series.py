"""DICOM series: slices ordered by position (not file name or InstanceNumber), the rescale applied, the stack's
geometry as an affine, shown as radiologists see them, a mask written back onto the series' own voxels, several
series in one folder, and one error line for each kind of series that would give wrong millimetres."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.errors import InputImageError
from datamodules.dicom_series import LPS_TO_RAS, read_series, scans_in
from datamodules.volumes import read_volume, scan_stem
from inference.scans import mask_volume, scan_summary

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows run to the patient's left, columns to posterior
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns down


def synthetic_stack(slices: int = 10) -> np.ndarray:
    """(slices, 64, 64) uint16: a disc of head with a bright block of tumour in slices 3-5, off centre."""
    rows, columns = np.mgrid[:64, :64]
    head = np.hypot(rows - 32, columns - 30) < 28
    stack = np.repeat(np.where(head, 400, 0)[None], slices, axis=0).astype(np.uint16)
    stack[3:6, 10:20, 36:44] = 1200
    return stack


def write_series(folder, stack, orientation=AXIAL, step=5.0, spacing=(3.75, 3.0), skip=(), **elements) -> list:
    """The stack as a series built from pydicom's MR_small.dcm: files named and numbered in an order unrelated to
    their positions; slice k at origin + k * step along the normal. Returns each slice's position (LPS mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    row_direction, column_direction = np.reshape(orientation, (2, 3))
    normal, origin = np.cross(row_direction, column_direction), np.array([-90.0, -110.0, 20.0])
    series_uid, positions = generate_uid(), []
    scrambled = np.random.default_rng(0).permutation(len(stack))
    for k, values in enumerate(stack):
        position = origin + k * step * normal
        positions.append(position)
        if k in skip:
            continue
        dataset = template.copy()
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series_uid, generate_uid()
        dataset.InstanceNumber = int(scrambled[k]) + 1
        dataset.ImageOrientationPatient = list(orientation)
        dataset.ImagePositionPatient = [float(v) for v in position]
        dataset.PixelSpacing = list(spacing)
        dataset.Rows, dataset.Columns = values.shape
        dataset.PixelRepresentation, dataset.BitsStored, dataset.HighBit = 0, 16, 15
        dataset.PixelData = values.astype(np.uint16).tobytes()
        for name, value in elements.items():
            setattr(dataset, name, value)
        dataset.save_as(folder / f"IM{scrambled[k]:04d}.dcm")
    return positions


def test_a_series_is_stacked_by_position_with_its_rescale_and_geometry(tmp_path):
    stack = synthetic_stack()
    positions = write_series(tmp_path / "series", stack, RescaleSlope=2, RescaleIntercept=-100)
    image = read_series(tmp_path / "series")
    volume = np.asarray(image.dataobj)
    assert volume.shape == (64, 64, 10)  # (columns, rows, slices)
    assert np.array_equal(volume, (2.0 * stack - 100).transpose(2, 1, 0))
    # voxel (column j, row i, slice k) is at position_k + j * column spacing along a row + i * row spacing down
    for j, i, k in [(0, 0, 0), (5, 7, 9), (63, 2, 4)]:
        lps = positions[k] + j * 3.0 * np.array([1.0, 0, 0]) + i * 3.75 * np.array([0, 1.0, 0])
        assert image.affine @ [j, i, k, 1] == pytest.approx(LPS_TO_RAS @ [*lps, 1])


def test_an_axial_series_is_shown_as_its_viewer_shows_it(tmp_path):
    # A DICOM viewer shows an axial slice as stored: row 0 anterior, column 0 the patient's right, as the 2D
    # training slices are; the display slices go from the feet up.
    stack = synthetic_stack()
    write_series(tmp_path / "series", stack)
    assert np.array_equal(read_volume(tmp_path / "series"), stack.astype(np.float32))


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL])
def test_a_mask_predicted_on_display_slices_lands_on_the_series_own_voxels(tmp_path, orientation):
    stack = synthetic_stack()
    write_series(tmp_path / "series", stack, orientation)
    predicted = [display > 1000 for display in read_volume(tmp_path / "series")]
    mask = mask_volume(tmp_path / "series", predicted)
    assert np.array_equal(np.asarray(mask.dataobj), (stack > 1000).transpose(2, 1, 0))
    assert np.array_equal(mask.affine, read_series(tmp_path / "series").affine)
    summary = scan_summary(tmp_path / "series", predicted)
    assert summary["tumor_volume_ml"] == pytest.approx(3 * 10 * 8 * 3.75 * 3.0 * 5.0 / 1000)


def test_a_folder_of_several_series_gives_each_and_lone_slices_stay_2d(tmp_path):
    write_series(tmp_path / "study", synthetic_stack())
    write_series(tmp_path / "study" / "sagittal", synthetic_stack(12), SAGITTAL)
    lone = tmp_path / "study" / "localizer.dcm"
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dataset.SeriesInstanceUID = generate_uid()
    dataset.save_as(lone)
    untagged = tmp_path / "study" / "sagittal" / "untagged.dcm"
    dataset.SeriesInstanceUID = ""
    dataset.save_as(untagged)
    scans, singles = scans_in(tmp_path)
    assert singles == [lone, untagged]  # a one-file series, and a file of no series: 2D slices
    assert str(tmp_path / "study" / "sagittal") in scans  # a series alone in its folder is named by it
    assert read_volume(tmp_path / "study" / "sagittal").shape == (64, 64, 12)  # the untagged file left out
    (axial,) = [scan for scan in scans if "#" in scan]  # the other shares its folder with it: FOLDER#UID
    assert axial.startswith(f"{tmp_path / 'study'}#") and read_volume(axial).shape == (10, 64, 64)
    assert scan_stem(axial) == f"study_{axial.rpartition('#')[2]}"
    with pytest.raises(InputImageError, match="3 DICOM series; give one as"):
        read_series(tmp_path / "study")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (dict(skip=(4,)), "1 uneven slice steps (the first after 35.0 mm: 10.00 mm against 5.00 mm); a slice missing?"),
        (dict(stack=synthetic_stack(4)), "4 slices over a 192 mm field of view; too small to be a brain scan"),
        (dict(spacing=(0.3125, 0.3125)), "10 slices over a 20 mm field of view; too small to be a brain scan"),
        (dict(step=0.0), "two slices at one position"),
    ],
)
def test_a_series_that_would_give_wrong_millimetres_is_one_error_line(tmp_path, build, message):
    build.setdefault("stack", synthetic_stack())
    write_series(tmp_path / "series", **build)
    with pytest.raises(InputImageError) as error:
        read_volume(tmp_path / "series")
    assert str(error.value).startswith(f"{tmp_path / 'series'}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_mixed_orientations_and_other_modalities_are_refused(tmp_path):
    write_series(tmp_path / "mixed", synthetic_stack())
    tilted = sorted((tmp_path / "mixed").iterdir())[0]
    dataset = pydicom.dcmread(tilted)
    dataset.ImageOrientationPatient = list(SAGITTAL)
    dataset.save_as(tilted)
    with pytest.raises(InputImageError, match=r"mixed: slices in 2 orientations \(ImageOrientationPatient\)"):
        read_series(tmp_path / "mixed")
    write_series(tmp_path / "ct", synthetic_stack(), Modality="CT")
    with pytest.raises(InputImageError, match=r"IM\d{4}\.dcm: a CT image; the models read MR scans only"):
        read_series(tmp_path / "ct")


def test_predict_writes_a_series_mask_on_its_geometry_and_its_row(tmp_path):
    import csv

    import nibabel as nib

    from tests.conftest import script_module

    write_series(tmp_path / "inputs" / "series", synthetic_stack())
    status = script_module("predict.py").main(
        ["--output_dir", str(tmp_path / "out"), "--no_gradcam", str(tmp_path / "inputs")]
    )
    assert status == 0
    mask = nib.load(tmp_path / "out" / "series_mask.nii.gz")
    assert mask.shape == (64, 64, 10) and np.allclose(mask.affine, read_series(tmp_path / "inputs" / "series").affine)
    with open(tmp_path / "out" / "scans.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["scan"] == str(tmp_path / "inputs" / "series") and row["slices"] == "10"
    assert pydicom.dcmread(tmp_path / "out" / row["dicom_seg_file"]).Modality == "SEG"
    assert {"tumor_type", "tumor_type_probability", "slices_unlike_training_data", "models_agree"} <= set(row)
    with open(tmp_path / "out" / "predictions.csv") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    assert files == [f"{tmp_path / 'inputs' / 'series'}@{index}" for index in range(10)]


def test_a_dicom_seg_of_the_mask_references_the_series_slices_it_lies_on(tmp_path):
    import highdicom as hd

    from datamodules.dicom_series import series_slices
    from inference.dicom_seg import tumour_segmentation

    stack = synthetic_stack()
    write_series(tmp_path / "series", stack, SAGITTAL)
    predicted = [display > 1000 for display in read_volume(tmp_path / "series")]
    tumour_segmentation(tmp_path / "series", mask_volume(tmp_path / "series", predicted)).save_as(tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "tumour"
    sources = series_slices(tmp_path / "series")
    assert [d.SeriesInstanceUID for d in seg.ReferencedSeriesSequence] == [sources[0].SeriesInstanceUID]
    uids = [d.SOPInstanceUID for d in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0], stack > 1000)  # slice by slice, in the series' own position order


def test_the_web_page_takes_a_zipped_series_and_shows_its_numbers_montage_and_slices(tmp_path):
    import zipfile

    import app
    from inference.bundled import models_to_use
    from inference.predictor import TumorPredictor

    write_series(tmp_path / "series", synthetic_stack())
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for path in sorted((tmp_path / "series").iterdir()):
            archive.write(path, f"study/{path.name}")
    predictor = TumorPredictor(*models_to_use(None, None), "cpu")
    probabilities, picture, gradcam, message, slider, slice_image, overlays = app.analyse(
        predictor, str(tmp_path / "series.zip")
    )
    assert set(probabilities) == {"glioma", "meningioma", "no_tumor", "pituitary"} and gradcam is None
    assert picture.ndim == 3 and message.startswith("**Scan series.zip:** 10 slices")
    assert (slider["visible"], slider["maximum"], slice_image["visible"]) == (True, 9, True)
    assert len(overlays) == 10 and overlays[0].shape == (64, 64, 3)
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    *_, message, slider, slice_image, overlays = app.analyse(predictor, str(tmp_path / "bad.zip"))
    assert message.startswith("Could not read **bad.zip**: not a readable zip file") and not slider["visible"]


def test_a_zip_that_unpacks_too_large_is_refused_unread(tmp_path, monkeypatch):
    import zipfile

    from datamodules import dicom_series

    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(3 * 2**20))  # 3 MB of zeros: a few kB zipped
    monkeypatch.setattr(dicom_series, "MAX_UNZIPPED_MB", 2)
    (tmp_path / "out").mkdir()
    with pytest.raises(InputImageError, match="big.zip: unpacks to more than 2 MB"):
        dicom_series.unzip_series(tmp_path / "big.zip", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
