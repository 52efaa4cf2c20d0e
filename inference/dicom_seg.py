"""A DICOM series' tumour mask as a DICOM Segmentation object (DICOM-SEG): one binary segment, "tumour", whose
frames reference the series' own slices, as PACS and viewers (OHIF, 3D Slicer) read it. highdicom writes it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from datamodules.dicom_series import series_slices

SOFTWARE = "brain-tumor-mri"


def software_version() -> str:
    try:
        return version(SOFTWARE)
    except PackageNotFoundError:  # run from a checkout that was not pip-installed
        return "unknown"


def tumour_segmentation(scan: str | Path, mask: nib.Nifti1Image, model_name: str = "segmenter") -> pydicom.Dataset:
    """The mask (mask_volume's, in the series' voxel order: columns, rows, slices) as a DICOM-SEG of the series.
    Slices without tumour get no frame, as highdicom omits empty frames."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = series_slices(scan)
    frames = np.asarray(mask.dataobj, dtype=np.uint8).transpose(2, 1, 0) > 0  # (slices, rows, columns)
    if frames.shape != (len(sources), sources[0].Rows, sources[0].Columns):
        raise ValueError(f"{scan}: a mask of {frames.shape[::-1]} voxels for a series of {len(sources)} slices")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{SOFTWARE} {model_name}", family=codes.DCM.ArtificialIntelligence, version=software_version()
    )
    tumour = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Brain],
    )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[tumour],
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=model_name,
        software_versions=software_version(),
        device_serial_number="none",
        content_description="tumour, predicted per slice; research use only",
    )
