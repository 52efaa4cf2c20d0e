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
alone is a 2D slice, as any image is. Scans go through Lightning's predict loop, one scan a step, written as soon
as it is predicted: `--devices 4 --strategy ddp` (GPUs, or CPU processes with --device cpu) or `--num_nodes`
spread them, each scan predicted once.

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
import logging
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from common.errors import UserError
from common.visualization import heatmap_overlay, mask_overlay
from datamodules.dicom_series import scans_in
from datamodules.images import IMAGE_SUFFIXES
from datamodules.volumes import PLANES, is_nifti, is_scan
from inference.arguments import add_model_arguments, parse_arguments
from inference.bundled import models_to_use
from inference.predictor import Prediction, TumorPredictor
from inference.scan_prediction import ScanPredictor, predict_scans
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
        "--devices", type=int, help="scans: processes (GPUs, or CPU processes) to spread them over (default: 1)"
    )
    parser.add_argument("--strategy", default="auto", help="scans: Lightning's strategy, e.g. ddp (default: auto)")
    parser.add_argument("--num_nodes", type=int, default=1, help="scans: machines of a distributed run (default: 1)")
    parser.add_argument(
        "--tta",
        choices=list(TTA_VIEWS),
        help="test-time augmentation: average both models over flipped views (default: the segmenter's own "
        "views, stored in it; the classifier's image as it is)",
    )
    args = parse_arguments(parser, argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its notes on hardware and loggers: noise here

    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.inputs)}")
    predictor = TumorPredictor(*models_to_use(args.cls_ckpt, args.seg_ckpt), args.device)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scans = [str(path) for path in paths if is_scan(path)]
    images = [path for path in paths if not is_scan(path)]
    scan_results = []
    if scans:
        module = ScanPredictor(predictor, args.plane, args.batch_size, args.tta)
        options = trainer_options(args) | {"enable_progress_bar": len(scans) > 1}  # a bar of scans
        scan_results = predict_scans(module, scans, output_dir, **options)
        if scan_results is None:  # another process of a distributed run: the first one writes the tables
            return 0
    rows, failures = [], 0
    gradcam = not args.no_gradcam
    predictions = predictor.predict_files(images, args.batch_size, gradcam=gradcam, tta=args.tta)
    for index, prediction in enumerate(tqdm(predictions, total=len(images), unit="image", disable=len(images) < 2)):
        row = prediction.row()
        if prediction.error:
            failures += 1
            tqdm.write(f"error: {prediction.error}", file=sys.stderr)
        else:
            for warning in prediction.warnings:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            if prediction.disagreement:
                tqdm.write(
                    f"warning: {prediction.path}: the models disagree: {prediction.disagreement}", file=sys.stderr
                )
            row |= save_images(prediction, output_dir, f"{index:05d}_{Path(prediction.path).stem}")
        rows.append(row)
    for result in scan_results:
        rows += result["slice_rows"]
        failures += len(result["errors"])
    scan_rows = [result["scan_row"] for result in scan_results if result["scan_row"]]
    write_tables(rows, output_dir)
    if scan_rows:
        write_tables(scan_rows, output_dir, "scans")
    if predictor.gradcam_unavailable:
        print(f"warning: {predictor.gradcam_unavailable}; no heat maps written", file=sys.stderr)
    predicted = len(rows) - sum(bool(row["error"]) for row in rows)
    print(f"{predicted} of {len(rows)} images predicted; tables in {output_dir}/predictions.csv and .json")
    if scan_rows:
        print(f"{len(scan_rows)} scans: their masks and {output_dir}/scans.csv")
    return 1 if failures else 0


def trainer_options(args: argparse.Namespace) -> dict:
    """Lightning's Trainer options for the scans: --device's kind (one device), or --devices/--strategy/--num_nodes."""
    kind, _, index = args.device.partition(":")
    accelerator = {"auto": "auto", "cpu": "cpu"}.get(kind, "gpu")
    devices = args.devices if args.devices is not None else ([int(index)] if index else 1)
    return {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
    }


if __name__ == "__main__":
    run_with_clean_errors(lambda: sys.exit(main()))
