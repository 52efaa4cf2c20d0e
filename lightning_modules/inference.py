"""Inference on image files with trained checkpoints: what predict.py, export.py, app.py and
evaluate.py share.

Preprocessing (image size, channels, normalization) is read from the checkpoint's saved
datamodule hyperparameters, so inference always matches how the model was trained."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.classification import CLASS_NAMES, ClassificationDataModule
from datamodules.common import CachedDataModule, Fingerprints, build_transform, read_image, resize_square
from datamodules.dicom import DICOM_SUFFIXES, read_dicom
from datamodules.errors import InputImageError, UserError
from datamodules.segmentation import SegmentationDataModule
from lightning_modules.base import TaskModule
from lightning_modules.checkpoints import CheckpointError, find_checkpoint, read_checkpoint
from lightning_modules.classification import ClassificationModule
from lightning_modules.model_file import is_model_file, read_model_file
from lightning_modules.segmentation import SegmentationModule

# An input whose shorter side is below this share of the model's input size is blown up so much
# that the model sees mostly interpolation: it is still predicted, with a warning.
SMALL_INPUT_FRACTION = 0.25


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" is the GPU when there is one; anything else is passed to torch ("cpu", "cuda:1")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# Test-time augmentation: the views a model is run on, each a flip of the image's (height, width)
# axes; outputs with a spatial layout (segmentation logits) are flipped back before the mean.
TTA_VIEWS: dict[str, list[tuple[int, ...]]] = {
    "none": [()],
    "hflip": [(), (3,)],
    "flips": [(), (3,), (2,), (2, 3)],
}


def run_with_tta(module: torch.nn.Module, images: torch.Tensor, tta: str = "none",
                 unflipped: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The mean of the module's outputs (logits) over the views of `tta` (a key of TTA_VIEWS);
    `unflipped`: its output on the images as they are, when the caller has it already."""
    outputs = []
    for dims in TTA_VIEWS[tta]:
        if not dims and unflipped is not None:
            outputs.append(unflipped)
            continue
        output = module(images.flip(dims) if dims else images)
        outputs.append(output.flip(dims) if dims and output.ndim == 4 else output)
    return torch.stack(outputs).mean(dim=0)


def classify(classifier: ClassificationModule, images: torch.Tensor, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits averaged over the views of `tta`, and the pooled features of the image as it is (what
    the familiarity score reads): the unflipped view's pass gives both."""
    logits, pooled = classifier.forward_with_features(images)
    return run_with_tta(classifier, images, tta, unflipped=logits), pooled


def load_image_file(path: str | Path, channels: int) -> np.ndarray:
    """Decode like training does (a DICOM slice rendered as a viewer shows it), with one clear
    error per kind of bad file."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: empty file")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, channels)
    image = read_image(path, channels)
    if image is None:
        raise InputImageError(f"{path}: not an image, or a corrupt one (could not decode)")
    return image


TASK_MODULES = {cls.__name__: cls for cls in (ClassificationModule, SegmentationModule)}
DATAMODULES = {cls.__name__: cls for cls in (ClassificationDataModule, SegmentationDataModule)}


@dataclass
class TrainedModel:
    """A task module in eval mode with the preprocessing and data settings it was trained with."""

    module: TaskModule
    image_size: int
    channels: int
    checkpoint: str
    data_hparams: dict = field(default_factory=dict)  # the training datamodule's arguments and class
    data_state: dict = field(default_factory=dict)  # what that datamodule saved (next epoch, fingerprints)

    @classmethod
    def load(cls, path: str | Path, module_class: type[TaskModule] | None, device: torch.device) -> TrainedModel:
        """A checkpoint file, the best checkpoint of a run folder, or a model file (export.py) of
        `module_class` (None: of either task). Loading reads only the file: no pretrained weights, no network
        (see TaskModule.load_pretrained_weights)."""
        slim = is_model_file(path)
        path = Path(path) if slim else find_checkpoint(path)
        checkpoint = read_model_file(path) if slim else read_checkpoint(path)
        saved_class = checkpoint.get("hyper_parameters", {}).get("_class_path", "").rsplit(".", 1)[-1]
        if module_class is None and saved_class not in TASK_MODULES:
            raise CheckpointError(f"{path}: not a checkpoint of this project's models (class '{saved_class}')")
        module_class = module_class or TASK_MODULES[saved_class]
        if saved_class and saved_class != module_class.__name__:
            raise CheckpointError(f"{path}: a {saved_class} checkpoint, expected {module_class.__name__}")
        data = checkpoint.get("datamodule_hyper_parameters")
        if not data or "image_size" not in data:
            raise CheckpointError(f"{path}: no saved preprocessing (datamodule hyperparameters); train it with train.py")
        data_state = next((v for k, v in checkpoint.items() if k.endswith("DataModule") and isinstance(v, dict)), {})
        if slim:
            arguments = {key: value for key, value in checkpoint["hyper_parameters"].items() if not key.startswith("_")}
            module = module_class(**arguments)
            module.load_state_dict(checkpoint["state_dict"])
            module = module.to(device).eval()
        else:
            module = module_class.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        return cls(module, int(data["image_size"]), int(data.get("channels", 3)), str(path), dict(data), data_state)

    def datamodule(self, root: str | list[str] | None = None) -> CachedDataModule:
        """The datamodule the model was trained with, with its arguments, on `root` if given."""
        class_name = str(self.data_hparams.get("_class_path", "")).rsplit(".", 1)[-1]
        if class_name not in DATAMODULES:
            raise CheckpointError(f"{self.checkpoint}: trained with an unknown datamodule '{class_name}'")
        arguments = {key: value for key, value in self.data_hparams.items() if not key.startswith("_")}
        return DATAMODULES[class_name](**{**arguments, **({"root": root} if root else {})})

    @property
    def training_fingerprints(self) -> Fingerprints | None:
        """The images the model was trained or validated on, when the checkpoint records them."""
        state = self.data_state.get("training_fingerprints")
        return Fingerprints.from_state(state) if state else None

    @property
    def device(self) -> torch.device:
        return self.module.device

    def batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded uint8 images of any size -> the normalized batch the model was trained on."""
        transform = build_transform([], self.channels)
        tensors = [transform(image=resize_square(image, self.image_size))["image"] for image in images]
        return torch.stack(tensors).to(self.device)


def as_feature_grid(classifier: torch.nn.Module, features: torch.Tensor) -> torch.Tensor | None:
    """The last features of a timm-style classifier as (N, C, h, w), whatever their layout:
    NCHW (CNNs), NHWC (timm's `output_fmt`, e.g. Swin) or transformer tokens (N, prefix + h*w, C)
    with `num_prefix_tokens` class/register tokens first. None when they have no spatial grid."""
    if features.ndim == 4:
        return features.permute(0, 3, 1, 2) if getattr(classifier, "output_fmt", "NCHW") == "NHWC" else features
    if features.ndim == 3:
        tokens = features[:, getattr(classifier, "num_prefix_tokens", 0) :]
        grid = getattr(getattr(classifier, "patch_embed", None), "grid_size", None)
        height, width = grid if grid and grid[0] * grid[1] == tokens.shape[1] else (math.isqrt(tokens.shape[1]),) * 2
        if height * width == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(len(tokens), -1, height, width)
    return None


def grad_cam_layer(classifier: torch.nn.Module) -> torch.nn.Module | None:
    """Where Grad-CAM reads a transformer that classifies from its class token: the input
    norm of the last block (as pytorch-grad-cam advises), since after that block the patch
    tokens no longer reach the prediction and get no gradient. None: the features
    `forward_features` returns, which every other timm-style network classifies from."""
    blocks = getattr(classifier, "blocks", None)
    if getattr(classifier, "global_pool", None) == "token" and blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1
    return None


def grad_cam(classifier: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class logits and a Grad-CAM map (N, h, w in [0, 1]) for each predicted class.

    Works on any network with timm's `forward_features` / `forward_head` split, CNN or
    transformer: the map weights the last feature maps by the mean gradient of the predicted
    logit. The maps are None for a network whose features have no spatial layout."""
    layer = grad_cam_layer(classifier)
    with torch.enable_grad():
        if layer is None:
            features = classifier.forward_features(batch).detach().requires_grad_(True)
            logits = classifier.forward_head(features)
        else:
            captured: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
            try:
                logits = classifier(batch.detach().requires_grad_(True))  # so the hooked output is in the graph
            finally:
                handle.remove()
            features = captured[-1]
        predicted = logits.argmax(dim=1)
        (gradients,) = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), features)
    logits = logits.detach()
    features, gradients = as_feature_grid(classifier, features.detach()), as_feature_grid(classifier, gradients)
    if features is None:
        return logits, None
    cam = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1))
    cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8)[:, None, None]
    return logits, cam.detach()


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
        return row | {"warning": "; ".join(self.warnings), "error": self.error or ""}


BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"  # model files that ship with the repository


def models_to_use(cls_ckpt: str | None, seg_ckpt: str | None) -> tuple[str | None, str | None]:
    """The models asked for; when none is, the bundled ones (models/classifier.safetensors and
    models/segmenter.safetensors, whichever exist)."""
    if cls_ckpt or seg_ckpt:
        return cls_ckpt, seg_ckpt
    bundled = [BUNDLED_MODELS / f"{name}.safetensors" for name in ("classifier", "segmenter")]
    return tuple(str(path) if path.is_file() else None for path in bundled)


class TumorPredictor:
    """The classifier, the segmenter or both, applied to image files in batches."""

    def __init__(self, cls_ckpt: str | Path | None = None, seg_ckpt: str | Path | None = None, device: str = "auto") -> None:
        if cls_ckpt is None and seg_ckpt is None:
            raise UserError(f"no model given and none bundled in {BUNDLED_MODELS}: pass a classifier (--cls-ckpt), "
                            "a segmenter (--seg-ckpt) or both")
        self.device = resolve_device(device)
        self.classifier = TrainedModel.load(cls_ckpt, ClassificationModule, self.device) if cls_ckpt else None
        self.segmenter = TrainedModel.load(seg_ckpt, SegmentationModule, self.device) if seg_ckpt else None
        self.gradcam_unavailable: str | None = None  # why, once a batch has shown it

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 16, gradcam: bool = True,
                      tta: str = "none") -> Iterator[Prediction]:  # fmt: skip
        """Predictions in input order; unreadable inputs come back with `error` set. `tta` (a key
        of TTA_VIEWS) averages both models over flipped views; Grad-CAM shows the image as it is."""
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
            prediction.warnings.append(f"{path}: a {width}x{height} image, far smaller than the {input_size}x{input_size} "
                                       "the model was trained at; the result is unreliable")  # fmt: skip
        return prediction

    @staticmethod
    def _as_rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image

    def _inputs(self, model: TrainedModel, predictions: list[Prediction]) -> torch.Tensor:
        # Decode again in the model's own channel mode, exactly as its datamodule did.
        return model.batch([load_image_file(p.path, model.channels) for p in predictions])

    @torch.no_grad()
    def _predict(self, batch: list[Prediction], gradcam: bool, tta: str) -> list[Prediction]:
        valid = [p for p in batch if p.error is None]
        if valid and self.classifier is not None:
            self._classify(valid, gradcam, tta)
        if valid and self.segmenter is not None:
            segmenter = self.segmenter.module  # its masks use the threshold fitted on its validation split
            tumor = segmenter.tumor_masks(run_with_tta(segmenter, self._inputs(self.segmenter, valid), tta))
            for i, prediction in enumerate(valid):
                prediction.tumor_mask = (upsample(tumor[i, 0], prediction.image.shape[:2]) >= 0.5).astype(np.uint8)
        return batch

    def _classify(self, valid: list[Prediction], gradcam: bool, tta: str) -> None:
        inputs = self._inputs(self.classifier, valid)
        classifier, cams = self.classifier.module, None
        if gradcam:
            _, cams = grad_cam(classifier.net, inputs)
            if cams is None:
                self.gradcam_unavailable = (f"Grad-CAM is not available for model '{classifier.hparams.model}': "
                                            "its features have no spatial layout")  # fmt: skip
        logits, pooled = classify(classifier, inputs, tta)
        probabilities, unfamiliar = classifier.probabilities(logits), classifier.is_unfamiliar(pooled)
        for i, prediction in enumerate(valid):
            prediction.probabilities = dict(zip(CLASS_NAMES, probabilities[i].tolist()))
            prediction.unlike_training_data = bool(unfamiliar[i])
            if unfamiliar[i]:
                prediction.warnings.append(f"{prediction.path}: unlike the images the classifier was trained on "
                                           "(not an MRI slice like them, or one it is unsure of): do not trust "
                                           "its class")  # fmt: skip
            if cams is not None:
                prediction.gradcam = upsample(cams[i], prediction.image.shape[:2])


def upsample(map_2d: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A low-resolution map, bilinearly resized to the input image's (height, width)."""
    return F.interpolate(map_2d[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
