"""A local web page: upload an MRI slice, see the class probabilities, the tumor overlay and a Grad-CAM map; or
upload a scan (a NIfTI volume, or a zip of a DICOM series), see its numbers, its montage and every slice's outline.

    python app.py [--cls_ckpt runs/cls/version_0] [--seg_ckpt runs/seg/version_0] [--port 7860]

A model is a .ckpt file, a run folder (its checkpoints/best.ckpt) or a model file (export.py); give
either or both, or neither to use the models bundled in models/ (their cards: models/*.md).

Research tool only: not a medical device and not a diagnosis.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gradio as gr

from common.errors import UserError
from common.labels import NO_TUMOR
from common.visualization import heatmap_overlay, mask_overlay
from datamodules.dicom import DICOM_SUFFIXES
from datamodules.dicom_series import unzip_series
from datamodules.volumes import NIFTI_SUFFIXES, is_nifti
from inference.arguments import add_model_arguments, parse_arguments
from inference.bundled import models_to_use
from inference.predictor import Prediction, TumorPredictor
from inference.scans import mean_probabilities, montage, scan_row, scan_slices, tumour_slices_of
from lightning_modules.cli import run_with_clean_errors

MAX_UPLOAD_MB = 200  # a scan: a DICOM series of 512 x 512 slices zips to about 100 MB
DISCLAIMER = (
    "**Research tool, not a diagnosis.** These models were trained on public Kaggle datasets and have not been "
    "validated clinically. Do not use them to make medical decisions; consult a radiologist."
)


UNLIKE_TRAINING_DATA = (
    "### ⚠️ This slice is unlike the images the models learned from\n"
    "Another scanner, sequence or preprocessing (a skull-stripped slice, say): the answers below may be wrong."
)
NO_TUMOR_UNLIKE_TRAINING_DATA = (
    ' **A "no tumor" answer means little here**: on slices unlike their training data, the models miss many '
    "tumours, large ones too. Look at the image yourself."
)


def describe(prediction: Prediction) -> str:
    lines = []
    if prediction.unlike_training_data:  # first, and above all a "no tumor": it must not be missed
        says_no_tumor = prediction.probabilities and prediction.predicted_class == NO_TUMOR
        lines.append(UNLIKE_TRAINING_DATA + (NO_TUMOR_UNLIKE_TRAINING_DATA if says_no_tumor else ""))
    if prediction.probabilities:
        lines.append(
            f"**Predicted class:** {prediction.predicted_class.replace('_', ' ')} "
            f"({prediction.probabilities[prediction.predicted_class]:.1%})"
        )
    if prediction.tumor_mask is not None:
        row = prediction.row()
        lines.append(
            f"**Segmented tumor area:** {row['tumor_area_px']} px ({row['tumor_area_fraction']:.2%} of the image)"
        )
    if prediction.disagreement:
        lines.append(
            f"**The two models disagree:** {prediction.disagreement}. "
            "Do not trust either answer alone: look at the image."
        )
    lines += [f"**Warning:** {warning.split(': ', 1)[-1]}" for warning in prediction.warnings]
    return "\n\n".join(lines)


def no_scan_view() -> tuple:
    """The slice slider and the slice hidden, no overlays: the callback's last outputs for anything but a scan."""
    return gr.update(visible=False), gr.update(visible=False), []


def message_only(message: str) -> tuple:
    return None, None, None, message, *no_scan_view()


def analyse(predictor: TumorPredictor, upload: str | None, tta: bool = False) -> tuple:
    """Gradio callback: (probabilities, tumor overlay, Grad-CAM overlay, message, and for a scan: the slice slider,
    the slice shown, every slice's overlay)."""
    if not upload:
        return message_only("Upload an MRI slice (JPEG, PNG or DICOM) or a scan first.")
    size_mb = Path(upload).stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        return message_only(f"That file is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB.")
    if is_nifti(Path(upload)) or Path(upload).suffix.lower() == ".zip":
        return analyse_scan(predictor, upload, tta)
    prediction = next(predictor.predict_files([upload], batch_size=1, gradcam=True, tta="hflip" if tta else None))
    if prediction.error:
        return message_only(f"Could not read **{Path(upload).name}**: {prediction.error.split(': ', 1)[-1]}.")
    tumor = mask_overlay(prediction.image, prediction.tumor_mask) if prediction.tumor_mask is not None else None
    gradcam = heatmap_overlay(prediction.image, prediction.gradcam) if prediction.gradcam is not None else None
    message = describe(prediction)
    if predictor.gradcam_unavailable:
        message += f"\n\n{predictor.gradcam_unavailable}."
    return prediction.probabilities or None, tumor, gradcam, message, *no_scan_view()


def analyse_scan(predictor: TumorPredictor, upload: str, tta: bool = False) -> tuple:
    """A scan: its numbers and montage, and a slider over its slices with their outlines."""
    try:
        with tempfile.TemporaryDirectory() as unpacked:
            scan = upload if is_nifti(Path(upload)) else unzip_series(Path(upload), Path(unpacked))[0]
            views = "hflip" if tta else None
            slices = list(predictor.predict_files(scan_slices(scan), batch_size=16, gradcam=False, tta=views))
            failed = next((prediction.error for prediction in slices if prediction.error), None)
            if failed:
                raise UserError(failed)
            row = scan_row(scan, slices)
    except UserError as error:
        return message_only(f"Could not read **{Path(upload).name}**: {str(error).split(': ', 1)[-1]}.")
    masks = [prediction.tumor_mask for prediction in slices]
    segmented = masks[0] is not None
    overlays = [mask_overlay(p.image, p.tumor_mask) if segmented else p.image for p in slices]
    with_tumour = [index for index, mask in enumerate(masks) if segmented and mask.any()]
    shown = with_tumour[len(with_tumour) // 2] if with_tumour else len(slices) // 2
    slider = gr.update(visible=True, minimum=0, maximum=len(slices) - 1, value=shown, step=1)
    picture = montage([p.image for p in slices], masks) if segmented else None
    slice_image = gr.update(visible=True, value=overlays[shown])
    return (
        scan_probabilities(slices),
        picture,
        None,
        scan_message(Path(upload).name, row),
        slider,
        slice_image,
        overlays,
    )


def scan_probabilities(slices: list[Prediction]) -> dict[str, float] | None:
    """The classifier's mean probabilities over the scan's slices with tumour (all slices when none has one)."""
    if not slices[0].probabilities:
        return None
    return mean_probabilities([prediction.probabilities for prediction in slices], tumour_slices_of(slices))


def scan_message(name: str, row: dict) -> str:
    lines = [f"**Scan {name}:** {row['slices']} slices"]
    if "tumor_slices" in row:
        lines.append(
            f"**Tumour:** on {row['tumor_slices']} slices, {row['tumor_volume_ml']:.1f} mL; the largest "
            f"cross-section {row['largest_cross_section_mm2']:.0f} mm² (slice {row['largest_cross_section_slice']})"
        )
    if row.get("tumor_type"):
        lines.append(f"**Tumour type:** {row['tumor_type']} ({row['tumor_type_probability']:.0%} on average)")
    if row.get("slices_unlike_training_data"):
        lines.append(
            f"**Warning:** {row['slices_unlike_training_data']} of {row['slices']} slices are unlike the images the "
            "models learned from: the answers may be wrong. Look at the slices yourself."
        )
    return "\n\n".join(lines)


def build_app(predictor: TumorPredictor) -> gr.Blocks:
    with gr.Blocks(title="Brain tumor MRI") as app:
        gr.Markdown("# Brain tumor MRI: classification and segmentation")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="MRI slice (JPEG, PNG or DICOM) or scan (NIfTI, or a zip of a DICOM series)",
                    file_types=["image", *DICOM_SUFFIXES, *NIFTI_SUFFIXES, ".zip"],
                    type="filepath",
                    elem_id="upload",
                )
                segmenter_views = predictor.segmenter.module.hparams.tta if predictor.segmenter else "none"
                tta = gr.Checkbox(
                    label="Also look at the mirrored slice (test-time augmentation)",
                    info=None
                    if segmenter_views == "none"
                    else "The segmenter always does: its threshold is fitted so.",
                    elem_id="tta",
                )
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                message = gr.Markdown(elem_id="message")
            with gr.Column(scale=1):
                probabilities = gr.Label(
                    label="Class probabilities"
                    if predictor.classifier
                    else "Class probabilities (no --cls_ckpt given)",
                    num_top_classes=4,
                    elem_id="probabilities",
                )
        with gr.Row():
            tumor = gr.Image(
                label="Segmented tumor" if predictor.segmenter else "Segmented tumor (no --seg_ckpt given)",
                elem_id="tumor",
            )
            gradcam = gr.Image(
                label="Grad-CAM: where the classifier looked"
                if predictor.classifier
                else "Grad-CAM (no --cls_ckpt given)",
                elem_id="gradcam",
            )
        slice_slider = gr.Slider(label="Slice of the scan", visible=False, elem_id="slice")
        slice_image = gr.Image(label="The slice, outlined", visible=False, elem_id="slice_image")
        overlays = gr.State([])
        slice_slider.change(
            lambda index, shown: shown[int(index)] if shown else None,
            inputs=[slice_slider, overlays],
            outputs=slice_image,
        )
        outputs = [probabilities, tumor, gradcam, message, slice_slider, slice_image, overlays]
        button.click(lambda path, flip: analyse(predictor, path, flip), inputs=[upload, tta], outputs=outputs)
        upload.upload(lambda path, flip: analyse(predictor, path, flip), inputs=[upload, tta], outputs=outputs)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    args = parse_arguments(parser, argv)
    predictor = TumorPredictor(*models_to_use(args.cls_ckpt, args.seg_ckpt), args.device)
    build_app(predictor).launch(
        server_name=args.host, server_port=args.port, max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=True
    )


if __name__ == "__main__":
    run_with_clean_errors(main)
