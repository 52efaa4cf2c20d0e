"""Classify MRI slices and/or segment their tumors with trained checkpoints.

    python predict.py [--cls_ckpt runs/cls/version_0] [--seg_ckpt runs/seg/version_0] \\
        [--output predictions] IMAGE_OR_FOLDER...

A model is a .ckpt file, a run folder (its checkpoints/best.ckpt) or a model file (export.py); give
either or both, or neither to use the models bundled in models/ (their cards: models/*.md).

A scan, a NIfTI volume (.nii, .nii.gz) or a DICOM series (a folder of its slices; a folder holding several
series gives each, named FOLDER#SERIES_UID), is predicted slice by slice (its axial slices, anterior up, windowed
per scan; --plane coronal or sagittal cuts it so): its slices get a row each (SCAN@INDEX), and with a segmenter the scan gets SCAN_mask.nii.gz (uint8,
1 = tumour, the input's shape and affine, or the DICOM stack's), SCAN_seg.dcm for a DICOM series (a DICOM-SEG
referencing it), SCAN_montage.png (its slices with tumour, outlined) and a row in scans.csv and scans.json
(slices, tumour slices, tumour volume in mL, the largest cross-section in mm^2 and its slice). A DICOM file
alone is a 2D slice, as any image is.

Writes predictions.csv and predictions.json, one row per image: with a classifier, the class, the
four calibrated probabilities and whether the image is unlike the training data; with a
segmenter, the tumor area in pixels and as a fraction of the image and the mask file. Per image
it also writes a Grad-CAM overlay (classifier) and the mask PNG and a mask overlay (segmenter). A bad input gets one
`error:` line and an error row; the other images are still processed (exit status 1). An
image far smaller than the model's input is predicted with a `warning:` line.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from itertools import chain
from pathlib import Path

import cv2
from tqdm import tqdm

from common.errors import UserError
from common.visualization import heatmap_overlay, mask_overlay
from datamodules.dicom_series import is_dicom_series, scans_in
from datamodules.images import IMAGE_SUFFIXES
from datamodules.volumes import PLANES, is_nifti, is_scan, scan_stem
from inference.arguments import add_model_arguments, parse_arguments
from inference.bundled import models_to_use
from inference.dicom_seg import tumour_segmentation
from inference.predictor import Prediction, TumorPredictor
from inference.scans import mask_volume, montage, scan_row, scan_slices
from lightning_modules.cli import run_with_clean_errors
from lightning_modules.tta import TTA_VIEWS


def expand_inputs(inputs: list[str]) -> list[Path | str]:
    """Files and scans as given (checked later, so a bad one is reported, not fatal); folders searched
    recursively: images, NIfTI volumes, DICOM series (scans) and lone DICOM slices (2D images)."""
    paths: list[Path | str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            series, lone_slices = scans_in(item)
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p))
            paths += lone_slices + series
        else:
            paths.append(item)
    return paths


def expand_scans(
    paths: list[Path | str], plane: str = "axial"
) -> tuple[list[str | Path], dict[str, list[str]], list[str]]:
    """Every scan replaced by its slices: the inputs to predict, each readable scan's slices, and one error
    line per scan that cannot be read (the other inputs are still predicted)."""
    inputs, scans, errors = [], {}, []
    for path in paths:
        if not is_scan(path):
            inputs.append(path)
            continue
        try:
            scans[str(path)] = scan_slices(path, plane)
        except UserError as error:
            errors.append(str(error))
            continue
        inputs += scans[str(path)]
    return inputs, scans, errors


def write_scan(scan: str, slices: list[Prediction], output_dir: Path, plane: str = "axial") -> dict | None:
    """A scan's outputs from its slices' predictions: with a segmenter its mask volume, SCAN_mask.nii.gz (and
    SCAN_seg.dcm, a DICOM-SEG, for a DICOM series) and its montage of the slices with tumour, SCAN_montage.png;
    and its row of numbers (scans.csv, scans.json). None when a slice could not be predicted."""
    if any(prediction.error for prediction in slices):
        return None
    stem, files = scan_stem(scan), {}
    slice_masks = [prediction.tumor_mask for prediction in slices]
    if slice_masks[0] is not None:
        mask = mask_volume(scan, slice_masks, plane)
        files = {"mask_file": f"{stem}_mask.nii.gz", "montage_file": f"{stem}_montage.png"}
        mask.to_filename(output_dir / files["mask_file"])
        if is_dicom_series(scan):
            files["dicom_seg_file"] = f"{stem}_seg.dcm"
            tumour_segmentation(scan, mask).save_as(output_dir / files["dicom_seg_file"])
        picture = montage([prediction.image for prediction in slices], slice_masks)
        cv2.imwrite(str(output_dir / files["montage_file"]), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return scan_row(scan, slices, plane) | files


def save_images(prediction: Prediction, output_dir: Path, name: str) -> dict[str, str]:
    """Write the prediction's pictures; returns the mask's path (relative to output_dir), if any."""

    def write(folder: str, image) -> str:
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(output_dir / folder / f"{name}.png"), image)
        return f"{folder}/{name}.png"

    if prediction.gradcam is not None:
        write("gradcam", heatmap_overlay(prediction.image, prediction.gradcam))
    if prediction.tumor_mask is None:
        return {}
    write("overlays", mask_overlay(prediction.image, prediction.tumor_mask))
    return {"mask_file": write("masks", prediction.tumor_mask * 255)}


def write_tables(rows: list[dict], output_dir: Path, name: str = "predictions") -> None:
    (output_dir / f"{name}.json").write_text(json.dumps(rows, indent=2))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(output_dir / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files (JPEG, PNG, ..., DICOM .dcm) and/or folders of them")
    add_model_arguments(parser)
    parser.add_argument(
        "--output_dir",
        "--output",
        default="predictions",
        help="the folder for the tables and images (default: %(default)s)",
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--plane", choices=list(PLANES), default="axial", help="the plane a scan is cut in (default: %(default)s)"
    )
    parser.add_argument("--no_gradcam", action="store_true", help="skip the Grad-CAM heat maps")
    parser.add_argument(
        "--tta",
        choices=list(TTA_VIEWS),
        help="test-time augmentation: average both models over flipped views (default: the segmenter's own "
        "views, stored in it; the classifier's image as it is)",
    )
    args = parse_arguments(parser, argv)

    paths, scans, scan_errors = expand_scans(expand_inputs(args.inputs), args.plane)
    for error in scan_errors:
        print(f"error: {error}", file=sys.stderr)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.inputs)}")
    predictor = TumorPredictor(*models_to_use(args.cls_ckpt, args.seg_ckpt), args.device)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, scan_rows, failures = [], [], len(scan_errors)
    scan_of = {name: scan for scan, slices in scans.items() for name in slices}
    images = [path for path in paths if str(path) not in scan_of]
    gradcam = not args.no_gradcam  # not for a scan's slices: its montage shows where the tumour is
    predictions = chain(
        predictor.predict_files(images, args.batch_size, gradcam=gradcam, tta=args.tta),
        predictor.predict_files(list(scan_of), args.batch_size, gradcam=False, tta=args.tta),
    )
    predicted: dict[str, list[Prediction]] = defaultdict(list)  # a scan's slices so far: one scan at a time
    for index, prediction in enumerate(tqdm(predictions, total=len(paths), unit="image", disable=len(paths) < 2)):
        row = prediction.row()
        if prediction.error:
            failures += 1
            tqdm.write(f"error: {prediction.error}", file=sys.stderr)
        elif prediction.path not in scan_of:
            for warning in prediction.warnings:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            if prediction.disagreement:
                tqdm.write(
                    f"warning: {prediction.path}: the models disagree: {prediction.disagreement}", file=sys.stderr
                )
            row |= save_images(prediction, output_dir, f"{index:05d}_{Path(prediction.path).stem}")
        rows.append(row)
        scan = scan_of.get(prediction.path)
        if scan is not None:
            predicted[scan].append(prediction)
            if len(predicted[scan]) == len(scans[scan]):
                doubted = sum(bool(p.row()["warning"]) for p in predicted[scan])
                if doubted:  # one line a scan, not one a slice: the slices' rows say which and why
                    tqdm.write(f"warning: {scan}: {doubted} of its {len(scans[scan])} slices with a doubt "
                               "(predictions.csv, column warning)", file=sys.stderr)  # fmt: skip
                scan_row = write_scan(scan, predicted.pop(scan), output_dir, args.plane)
                scan_rows += [scan_row] if scan_row else []
    write_tables(rows, output_dir)
    if scan_rows:
        write_tables(scan_rows, output_dir, "scans")
    if predictor.gradcam_unavailable:
        print(f"warning: {predictor.gradcam_unavailable}; no heat maps written", file=sys.stderr)
    print(f"{len(rows) - failures} of {len(rows)} images predicted; tables in {output_dir}/predictions.csv and .json")
    if scan_rows:
        print(f"{len(scan_rows)} scans: their masks and {output_dir}/scans.csv")
    return 1 if failures else 0


if __name__ == "__main__":
    run_with_clean_errors(lambda: sys.exit(main()))
