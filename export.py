"""Export trained checkpoints as slim model files (default) or to ONNX.

    python export.py [--cls_ckpt runs/cls/version_0] [--seg_ckpt runs/seg/version_0] [--output_dir exports] \\
        [--format safetensors|onnx] [--dtype float16|float32]

A checkpoint is a .ckpt file or a run folder (its checkpoints/best.ckpt).

classifier.safetensors / segmenter.safetensors: the weights without the optimizer state, with the
architecture, preprocessing, calibration temperature, mask threshold and training-image fingerprints
in the file's header (lightning_modules/model_file.py). predict.py, app.py and evaluate.py take them
wherever they take a checkpoint; they load without pickle.

classifier.onnx maps a normalized (N, C, H, W) float batch to the four class probabilities
(calibrated: the temperature fitted in training is part of the graph);
segmenter.onnx maps one to per-pixel tumor probabilities (N, 1, H, W), averaged over the segmenter's
own views (its `tta`, in the sidecar) as its threshold was fitted. The batch size is
dynamic; H, W and C are those in the sidecar (*.json), as are the normalization and class names.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from common.labels import CLASS_NAMES
from datamodules.transforms import imagenet_normalization
from inference.arguments import parse_arguments
from lightning_modules.classification import ClassificationModule
from lightning_modules.cli import run_with_clean_errors
from lightning_modules.model_file import write_model_file
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.trained_model import TrainedModel
from lightning_modules.tta import run_with_tta

OPSET = 17


class CalibratedSoftmax(torch.nn.Module):
    """The classifier's calibrated probabilities: softmax of the logits over its temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / self.temperature).softmax(dim=1)


class WithActivation(torch.nn.Module):
    """The network plus its output activation, so ONNX users get probabilities directly, averaged over
    the views of `tta` (a segmenter's own, which its threshold was fitted on)."""

    def __init__(self, net: torch.nn.Module, activation: torch.nn.Module, tta: str = "none") -> None:
        super().__init__()
        self.net, self.activation, self.tta = net, activation, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.activation(run_with_tta(self.net, images, self.tta))


def export_model(model: TrainedModel, activation: torch.nn.Module, path: Path, extra: dict) -> Path:
    """Write path (ONNX) and path.with_suffix('.json') (preprocessing); return the ONNX path."""
    wrapped = WithActivation(model.module.net, activation, model.module.hparams.get("tta", "none")).cpu().eval()
    example = torch.zeros(1, model.channels, model.image_size, model.image_size)
    # The TorchScript exporter: needs only `onnx`, and its output matches PyTorch (tests/test_inference.py).
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    normalize = imagenet_normalization(model.channels)
    sidecar = {
        "checkpoint": model.checkpoint,
        "input": {
            "channels": model.channels,
            "height": model.image_size,
            "width": model.image_size,
            "scale": "pixel / 255",
            "mean": list(normalize.mean),
            "std": list(normalize.std),
        },
        **extra,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path


def export_model_file(model: TrainedModel, path: Path, half: bool) -> Path:
    module = model.module
    hparams = {"_class_path": f"lightning_modules.{type(module).__name__}", **dict(module.hparams)}
    return write_model_file(module, hparams, model.data_hparams, model.data_state, path, half)


def export_checkpoints(
    cls_ckpt: str | None, seg_ckpt: str | None, output_dir: Path, format: str = "safetensors", half: bool = True
) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if cls_ckpt:
        classifier = TrainedModel.load(cls_ckpt, ClassificationModule, torch.device("cpu"))
        if format == "safetensors":
            written.append(export_model_file(classifier, output_dir / "classifier.safetensors", half))
        else:
            temperature = float(classifier.module.temperature)
            written.append(
                export_model(
                    classifier,
                    CalibratedSoftmax(temperature),
                    output_dir / "classifier.onnx",
                    {"class_names": list(CLASS_NAMES), "temperature": temperature},
                )
            )
    if seg_ckpt:
        segmenter = TrainedModel.load(seg_ckpt, SegmentationModule, torch.device("cpu"))
        if format == "safetensors":
            written.append(export_model_file(segmenter, output_dir / "segmenter.safetensors", half))
        else:
            postprocessing = {
                "threshold": float(segmenter.module.threshold),  # fitted on the validation split
                "min_tumor_area": segmenter.module.hparams.min_tumor_area,
                "tumor_area_threshold": float(segmenter.module.tumor_area_threshold),
                "detection_threshold": float(segmenter.module.detection_threshold),
                "tta": segmenter.module.hparams.tta,  # views already averaged in the graph
            }
            written.append(export_model(segmenter, torch.nn.Sigmoid(), output_dir / "segmenter.onnx", postprocessing))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cls_ckpt", help="classifier: a checkpoint or run folder")
    parser.add_argument("--seg_ckpt", help="segmenter: a checkpoint or run folder")
    parser.add_argument("--output_dir", default="exports", help="default: %(default)s")
    parser.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        default="safetensors",
        help="a slim model file for this project's tools, or ONNX for other runtimes (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="of the weights in a model file (default: %(default)s; docs/studies/slim_model_files.md measures the difference)",
    )
    args = parse_arguments(parser, argv)
    if not (args.cls_ckpt or args.seg_ckpt):
        parser.error("give --cls_ckpt, --seg_ckpt or both")
    for path in export_checkpoints(
        args.cls_ckpt, args.seg_ckpt, Path(args.output_dir), args.format, args.dtype == "float16"
    ):
        sidecar = f" and {path.with_suffix('.json').name}" if args.format == "onnx" else ""
        print(f"wrote {path}{sidecar} ({path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    run_with_clean_errors(main)
