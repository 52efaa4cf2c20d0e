"""The classifier, the segmenter or both applied to image files: what predict.py and app.py show."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import InputImageError, UserError
from common.labels import CLASS_NAMES, NO_TUMOR
from datamodules.images import load_image_file
from inference.batches import inference_precision
from inference.bundled import BUNDLED_MODELS
from inference.gradcam import grad_cam
from lightning_modules.classification import ClassificationModule
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.trained_model import TrainedModel, resolve_device

# An input whose shorter side is below this share of the model's input size is blown up so much
# that the model sees mostly interpolation: it is still predicted, with a warning.
SMALL_INPUT_FRACTION = 0.25


@dataclass
class Prediction:
    """Everything known about one input image; `error` set means nothing else is."""

    path: str
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # predicted, but with a reason for doubt
    unlike_training_data: bool = False  # its features are farther from the classes than its validation threshold
    image: np.ndarray | None = None  # the input as HxWx3 RGB uint8
    probabilities: dict[str, float] = field(default_factory=dict)
    gradcam: np.ndarray | None = None  # HxW in [0, 1], at the input's size
    tumor_mask: np.ndarray | None = None  # HxW {0, 1}, at the input's size

    @property
    def predicted_class(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    @property
    def models_agree(self) -> bool | None:
        """Whether the classifier and the segmenter agree on "is there a tumour?"; None unless both ran."""
        if not self.probabilities or self.tumor_mask is None:
            return None
        return (self.predicted_class != NO_TUMOR) == bool(self.tumor_mask.any())

    @property
    def disagreement(self) -> str | None:
        """What the two models say when they disagree on whether there is a tumour."""
        if self.models_agree is not False:
            return None
        said = f"the classifier says {self.predicted_class.replace('_', ' ')} ({self.probabilities[self.predicted_class]:.0%})"
        if self.tumor_mask.any():
            return f"{said}, the segmenter finds a tumour of {int(self.tumor_mask.sum())} px"
        return f"{said}, the segmenter finds no tumour"

    def row(self) -> dict:
        """One line of the predictions table."""
        row = {"file": self.path}
        if self.probabilities:  # classified (calibrated probabilities)
            row |= {"predicted_class": self.predicted_class}
            row |= {f"p_{name}": round(p, 6) for name, p in self.probabilities.items()}
            row["unlike_training_data"] = int(self.unlike_training_data)
        if self.tumor_mask is not None:
            row["tumor_area_px"] = int(self.tumor_mask.sum())
            row["tumor_area_fraction"] = round(float(self.tumor_mask.mean()), 6)
        if self.models_agree is not None:
            row["models_agree"] = int(self.models_agree)
        doubts = self.warnings + (
            [f"{self.path}: the models disagree: {self.disagreement}"] if self.disagreement else []
        )
        return row | {"warning": "; ".join(doubts), "error": self.error or ""}


class TumorPredictor:
    """The classifier, the segmenter or both, applied to image files in batches."""

    def __init__(
        self, cls_ckpt: str | Path | None = None, seg_ckpt: str | Path | None = None, device: str = "auto"
    ) -> None:
        if cls_ckpt is None and seg_ckpt is None:
            raise UserError(
                f"no model given and none bundled in {BUNDLED_MODELS}: pass a classifier (--cls_ckpt), "
                "a segmenter (--seg_ckpt) or both"
            )
        target = resolve_device(device)
        self.classifier = TrainedModel.load(cls_ckpt, ClassificationModule, target) if cls_ckpt else None
        self.segmenter = TrainedModel.load(seg_ckpt, SegmentationModule, target) if seg_ckpt else None
        self.gradcam_unavailable: str | None = None  # why, once a batch has shown it

    @property
    def device(self) -> torch.device:
        """Where the models are: where they were loaded, or where Lightning's predict loop moved them."""
        return next(model.device for model in (self.classifier, self.segmenter) if model is not None)

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 16, gradcam: bool = True, tta: str | None = None
    ) -> Iterator[Prediction]:
        """Predictions in input order; unreadable inputs come back with `error` set. `tta` (a key
        of TTA_VIEWS) averages both models over flipped views; None: the segmenter's own views and the
        classifier's image as it is. Grad-CAM shows the image as it is."""
        pending: list[Prediction] = []
        for path in paths:
            pending.append(self._read(path))
            if len(pending) == batch_size:
                yield from self._predict(pending, gradcam, tta)
                pending = []
        if pending:
            yield from self._predict(pending, gradcam, tta)

    def _read(self, path: str | Path) -> Prediction:
        try:
            prediction = Prediction(str(path), image=self._as_rgb(load_image_file(path, 3)))
        except InputImageError as error:
            return Prediction(str(path), error=str(error))
        input_size = max(model.image_size for model in (self.classifier, self.segmenter) if model is not None)
        height, width = prediction.image.shape[:2]
        if min(height, width) < SMALL_INPUT_FRACTION * input_size:
            prediction.warnings.append(
                f"{path}: a {width}x{height} image, far smaller than the {input_size}x{input_size} "
                "the model was trained at; the result is unreliable"
            )
        return prediction

    @staticmethod
    def _as_rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image

    def _inputs(self, model: TrainedModel, predictions: list[Prediction]) -> torch.Tensor:
        # Decode again in the model's own channel mode, exactly as its datamodule did.
        return model.batch([load_image_file(p.path, model.channels) for p in predictions])

    @torch.no_grad()
    def _predict(self, batch: list[Prediction], gradcam: bool, tta: str | None) -> list[Prediction]:
        with inference_precision(self.device):
            return self._predict_in_precision(batch, gradcam, tta)

    def _predict_in_precision(self, batch: list[Prediction], gradcam: bool, tta: str | None) -> list[Prediction]:
        valid = [p for p in batch if p.error is None]
        if valid and self.classifier is not None:
            self._classify(valid, gradcam, tta)
        if valid and self.segmenter is not None:
            segmenter = self.segmenter.module  # its masks use the threshold fitted on its validation split
            tumor = segmenter.tumor_masks(segmenter.predict_logits(self._inputs(self.segmenter, valid), tta))
            for i, prediction in enumerate(valid):
                prediction.tumor_mask = (upsample(tumor[i, 0], prediction.image.shape[:2]) >= 0.5).astype(np.uint8)
        return batch

    def _classify(self, valid: list[Prediction], gradcam: bool, tta: str | None) -> None:
        inputs = self._inputs(self.classifier, valid)
        module, cams = self.classifier.module, None
        if gradcam:
            _, cams = grad_cam(module.net, inputs)
            if cams is None:
                self.gradcam_unavailable = (
                    f"Grad-CAM is not available for model '{module.hparams.model}': its features have no spatial layout"
                )
        logits, pooled = module.classify(inputs, tta or "none")
        probabilities, unfamiliar = module.probabilities(logits), module.is_unfamiliar(pooled)
        for i, prediction in enumerate(valid):
            prediction.probabilities = dict(zip(CLASS_NAMES, probabilities[i].tolist()))
            prediction.unlike_training_data = bool(unfamiliar[i])
            if unfamiliar[i]:
                prediction.warnings.append(
                    f"{prediction.path}: unlike the images the classifier was trained on "
                    "(not an MRI slice like them, or one it is unsure of): do not trust "
                    "its class"
                )
            if cams is not None:
                prediction.gradcam = upsample(cams[i], prediction.image.shape[:2])


def upsample(map_2d: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A low-resolution map, bilinearly resized to the input image's (height, width)."""
    return (
        F.interpolate(map_2d[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
    )
