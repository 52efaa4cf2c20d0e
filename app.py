"""A local web page: upload an MRI slice, see the class probabilities, the tumor overlay and a Grad-CAM map.

    python app.py [--cls_ckpt runs/cls/version_0] [--seg_ckpt runs/seg/version_0] [--port 7860]

A model is a .ckpt file, a run folder (its checkpoints/best.ckpt) or a model file (export.py); give
either or both, or neither to use the models bundled in models/ (their cards: models/*.md).

Research tool only: not a medical device and not a diagnosis.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr

from common.labels import NO_TUMOR
from common.visualization import heatmap_overlay, mask_overlay
from datamodules.dicom import DICOM_SUFFIXES
from inference.arguments import add_model_arguments, parse_arguments
from inference.bundled import models_to_use
from inference.predictor import Prediction, TumorPredictor
from lightning_modules.cli import run_with_clean_errors

MAX_UPLOAD_MB = 20
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


def analyse(predictor: TumorPredictor, upload: str | None, tta: bool = False):
    """Gradio callback: (probabilities, tumor overlay, Grad-CAM overlay, message)."""
    if not upload:
        return None, None, None, "Upload an MRI slice (JPEG, PNG or DICOM) first."
    size_mb = Path(upload).stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        return None, None, None, f"That file is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB."
    prediction = next(predictor.predict_files([upload], batch_size=1, gradcam=True, tta="hflip" if tta else None))
    if prediction.error:
        name = Path(upload).name
        return None, None, None, f"Could not read **{name}**: {prediction.error.split(': ', 1)[-1]}."
    tumor = mask_overlay(prediction.image, prediction.tumor_mask) if prediction.tumor_mask is not None else None
    gradcam = heatmap_overlay(prediction.image, prediction.gradcam) if prediction.gradcam is not None else None
    message = describe(prediction)
    if predictor.gradcam_unavailable:
        message += f"\n\n{predictor.gradcam_unavailable}."
    return prediction.probabilities or None, tumor, gradcam, message


def build_app(predictor: TumorPredictor) -> gr.Blocks:
    with gr.Blocks(title="Brain tumor MRI") as app:
        gr.Markdown("# Brain tumor MRI: classification and segmentation")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="MRI slice (JPEG, PNG or DICOM)",
                    file_types=["image", *DICOM_SUFFIXES],
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
        outputs = [probabilities, tumor, gradcam, message]
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
