"""DICOM input: display window, photometric interpretation, refusals, and predict.py on a .dcm file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from common.errors import InputImageError
from datamodules.dicom import read_dicom
from tests.conftest import run_script


def write_dicom(path: Path, values: np.ndarray, frames: int = 1, **elements) -> Path:
    """A minimal uncompressed 16-bit DICOM file, as a scanner's export would hold it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PhotometricInterpretation = "MR", "MONOCHROME2"
    dataset.Rows, dataset.Columns = values.shape[-2:]
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 1, 16, 12, 11
    dataset.PixelRepresentation = 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    for name, value in elements.items():
        setattr(dataset, name, value)
    dataset.PixelData = values.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


RAMP = np.tile(np.arange(0, 4000, 40), (100, 1))  # 0 ... 3960 along each row


def test_the_file_window_is_applied(tmp_path):
    image = read_dicom(write_dicom(tmp_path / "a.dcm", RAMP, WindowCenter=2000, WindowWidth=1000), channels=1)
    assert image.shape == (100, 100, 1) and image.dtype == np.uint8
    row = image[0, :, 0].astype(int)
    assert row[RAMP[0] <= 1500].max() == 0 and row[RAMP[0] >= 2500].min() == 255  # outside the window: black, white
    assert abs(row[50] - 128) <= 1  # the centre (value 2000) is mid-gray


def test_rescale_and_monochrome1_and_the_fallback_window(tmp_path):
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", RAMP), channels=3)
    assert plain.shape == (100, 100, 3) and plain[0, 0, 0] == 0 and plain[0, -1, 0] == 255  # 1st-99th percentile
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", RAMP, PhotometricInterpretation="MONOCHROME1"), channels=1)
    assert np.array_equal(inverted[..., 0], 255 - plain[..., 0])
    # values 0..3960 rescaled to -1000..2960: the window 1000 +- 500 now sits 1000 stored units higher
    rescaled = read_dicom(
        write_dicom(
            tmp_path / "r.dcm", RAMP, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=1000
        ),
        channels=1,
    )
    assert abs(int(rescaled[0, 50, 0]) - 128) <= 1


@pytest.mark.parametrize(
    ("elements", "frames", "message"),
    [
        ({"Modality": "CT"}, 1, "a CT image; the models read MR slices only"),
        ({}, 3, "a multi-frame DICOM (3 frames); give single slices"),
    ],
)
def test_other_modalities_and_series_are_refused(tmp_path, elements, frames, message):
    values = np.stack([RAMP] * frames) if frames > 1 else RAMP
    path = write_dicom(tmp_path / "x.dcm", values, frames=frames, **elements)
    with pytest.raises(InputImageError, match=rf"x.dcm: {message}".replace("(", r"\(").replace(")", r"\)")):
        read_dicom(path, 1)


def test_a_file_that_is_not_dicom_names_itself(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(InputImageError, match="fake.dcm: not a readable DICOM file"):
        read_dicom(tmp_path / "fake.dcm", 1)


def test_predict_reads_a_dicom_slice_with_the_bundled_models(tmp_path):
    """`python predict.py some.dcm` straight after the install."""
    slice_values = (np.random.default_rng(0).random((64, 64)) * 3000).astype(np.uint16)
    path = write_dicom(tmp_path / "slice.dcm", slice_values, WindowCenter=1500, WindowWidth=3000)
    write_dicom(tmp_path / "ct.dcm", slice_values, Modality="CT")
    result = run_script("predict.py", "--output", "out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1  # the CT file is an error row; the MR slice is predicted
    rows = {Path(row["file"]).name: row for row in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert rows[path.name]["error"] == "" and rows[path.name]["predicted_class"] and rows[path.name]["mask_file"]
    assert "a CT image" in rows["ct.dcm"]["error"]
