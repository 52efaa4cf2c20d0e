"""Network factories: the classifier (the project's residual CNN, or any timm model by name)
and the segmenter (an smp UNet), each optionally from pretrained weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from datamodules.errors import UserError
from lightning_modules.checkpoints import find_checkpoint, read_checkpoint


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        nn.init.zeros_(self.body[-1].weight)  # each block starts as identity: trains stably from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class PooledClassifier(nn.Module):
    """timm's classifier interface for the project's own networks: `forward_features` (set by the
    subclass), then `head` (pooling, flattening, dropout, a linear layer) in `forward_head`, whose
    `pre_logits` gives the pooled features; `num_features` is their size."""

    head: nn.Sequential
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or with `pre_logits` the pooled features the last layer classifies."""
        return self.head[:-1](features) if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResidualCNN(PooledClassifier):
    """A small ResNet for training from scratch on a few thousand images.

    Splits into `forward_features` and `forward_head` as timm models do, so Grad-CAM and the
    familiarity score work the same on both.

    Args:
        num_classes: outputs of the linear head.
        in_chans: image channels (1 for grayscale MRI, 3 for RGB); timm's name for it.
        width: channels of the first stage; each later stage doubles them.
        depths: residual blocks per stage; every stage after the first halves the resolution.
        drop_rate: dropout before the head.
    """

    def __init__(
        self,
        num_classes: int = 4,
        in_chans: int = 1,
        width: int = 32,
        depths: tuple[int, ...] = (1, 2, 2, 2),
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, channels = [], width
        for index, depth in enumerate(depths):
            out_channels = width * 2**index
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(channels, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class MobileNetV2Classifier(PooledClassifier):
    """torchvision's MobileNetV2 with timm's `forward_features` / `forward_head` split, for 1- or
    3-channel images. Its features can start from a local ImageNet file in torchvision's layout
    (`load_pretrained`), so an ImageNet-pretrained classifier trains offline.

    Args:
        num_classes: outputs of the linear head.
        in_chans: image channels; with 1, the pretrained first convolution is summed over RGB.
        drop_rate: dropout before the head.
    """

    def __init__(self, num_classes: int = 4, in_chans: int = 1, drop_rate: float = 0.2) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.features = mobilenet_v2(weights=None).features
        if in_chans != 3:
            first = self.features[0][0]
            self.features[0][0] = nn.Conv2d(in_chans, first.out_channels, 3, 2, 1, bias=False)
        self.num_features = 1280
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                  nn.Linear(self.num_features, num_classes))  # fmt: skip

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, path: str | Path) -> None:
        """ImageNet features from a torchvision-layout file (a classifier head in it is ignored)."""
        state = read_weights_file(path)
        state = {key: value for key, value in state.items() if key.startswith("features.")}
        first = "features.0.0.weight"
        if first in state and state[first].shape[1] != self.features[0][0].in_channels:
            state[first] = adapt_input_conv(self.features[0][0].in_channels, state[first])
        missing, unexpected = nn.Module.load_state_dict(self, state, strict=False)
        missing = [key for key in missing if not key.startswith("head.")]
        if missing or unexpected:
            raise PretrainedWeightsError(f"{path}: does not fit MobileNetV2's features ({len(missing)} missing, e.g. "
                                         f"{missing[:2]}; {len(unexpected)} unexpected)")  # fmt: skip


LOCAL_MODELS = {"residual_cnn": ResidualCNN, "mobilenet_v2": MobileNetV2Classifier}


class PretrainedWeightsError(UserError):
    """Pretrained weights that cannot be had: not downloadable (the message says how to use a
    local file instead), a file that is missing or does not fit the network."""


def check_pretrained_source(name: str, pretrained: bool, weights_path: str | None) -> None:
    """Fail early, at construction, on pretrained options that can never work for this classifier.
    (Whether the weights file exists is checked when they are loaded: a resumed run needs no file.)"""
    if name in LOCAL_MODELS and pretrained:
        raise UserError(f"model '{name}' downloads no weights; give a local file as weights_path, if it takes one")
    if name in LOCAL_MODELS and weights_path and not hasattr(LOCAL_MODELS[name], "load_pretrained"):
        raise UserError(f"model '{name}' is trained from scratch; it has no pretrained weights")


def create_classifier(
    name: str = "residual_cnn",
    num_classes: int = 4,
    in_chans: int = 1,
    pretrained: bool = False,
    weights_path: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a classifier by name: "residual_cnn" or any `timm.list_models()` name.

    For timm models, `pretrained` downloads ImageNet weights from the Hugging Face hub;
    `weights_path` loads them from a local file instead (for offline machines)."""
    check_pretrained_source(name, pretrained, weights_path)
    if weights_path and not Path(weights_path).is_file():
        raise PretrainedWeightsError(f"{weights_path}: pretrained weights file not found")
    if name in LOCAL_MODELS:
        model = LOCAL_MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
        if weights_path:
            model.load_pretrained(weights_path)
        return model
    if not timm.is_model(name):
        raise UserError(f"unknown model '{name}': use 'residual_cnn' or a name from timm.list_models()")
    overlay = {"file": str(weights_path)} if weights_path else None
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or bool(weights_path),
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )
    except TypeError as error:  # configs/cls.yaml's model_kwargs are the residual CNN's
        if not kwargs:
            raise
        raise UserError(
            f"model_kwargs {kwargs} do not fit timm model '{name}' ({error}); set model.init_args.model_kwargs "
            "to {} or to that model's own arguments"
        ) from error
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        if weights_path:
            raise PretrainedWeightsError(f"{weights_path}: could not load it into '{name}' ({error})") from error
        raise PretrainedWeightsError(
            f"could not download pretrained weights for '{name}' ({type(error).__name__}); "
            "on an offline machine pass model.init_args.weights_path=/path/to/weights (.pth or .safetensors)"
        ) from error


HEAD_PREFIXES = ("fc.", "classifier.", "head.")
WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local weights file (also one wrapped under "state_dict" or "model")."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({str(error).splitlines()[0]})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A convolution kernel trained on images of other channels, for `channels`-channel input:
    grayscale kernels spread evenly over the channels, colour ones summed (timm's rule), so a
    grayscale image shown as identical R, G and B gives the features it gave before."""
    if weight.shape[1] == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    return adapt_input_conv(channels, weight)


def classifier_backbone(path: str | Path, encoder_name: str) -> dict[str, torch.Tensor]:
    """The network weights of a classification checkpoint (a .ckpt file or a run folder's
    best.ckpt) whose classifier is the same architecture as the encoder `encoder_name`."""
    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    saved_class = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]
    if saved_class != "ClassificationModule":
        raise PretrainedWeightsError(f"{path}: a {saved_class or 'foreign'} checkpoint; encoder weights come from a "
                                     "classification checkpoint (or an ImageNet weights file)")  # fmt: skip
    if hparams.get("model") != encoder_name:
        raise PretrainedWeightsError(
            f"{path}: its classifier is '{hparams.get('model')}', which cannot initialise the '{encoder_name}' "
            f"encoder; train a classifier with model: {encoder_name} (configs/cls_resnet50.yaml) or change encoder_name"
        )
    return {key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}


def encoder_weights_in(path: str | Path, encoder_name: str) -> dict[str, torch.Tensor]:
    """The weights a file or run folder offers an encoder: a classification checkpoint's network,
    or an ImageNet state dict (torchvision or timm layout)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".ckpt":
        return classifier_backbone(path, encoder_name)
    return read_weights_file(path)


def load_encoder_weights(encoder: nn.Module, path: str | Path, encoder_name: str) -> None:
    """Load pretrained weights into an smp encoder: an ImageNet checkpoint (torchvision or timm key
    layout), or the network of a classification checkpoint of the same architecture.

    Classification heads are dropped, wrapper prefixes stripped and a first convolution trained
    on other channels adapted; anything else that does not match is an error naming the file, so
    a wrong checkpoint never half-loads."""
    check_encoder_weights(str(path))
    expected = encoder.state_dict()
    cleaned = {}
    for key, value in encoder_weights_in(path, encoder_name).items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(HEAD_PREFIXES):
            continue
        target = expected.get(key)
        if target is not None and value.ndim == 4 and value.shape[1] != target.shape[1]:
            value = adapt_first_conv(value, target.shape[1])
        cleaned[key] = value
    # nn.Module's own method: smp encoders override it and return nothing
    try:
        missing, unexpected = nn.Module.load_state_dict(encoder, cleaned, strict=False)
    except RuntimeError as error:  # same names, other shapes: another width or depth of the architecture
        raise PretrainedWeightsError(f"{path}: does not fit this encoder ({str(error).splitlines()[1].strip()})") from error
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path}: does not fit this encoder ({len(missing)} weights missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )


def is_local_weights(encoder_weights: str | None) -> bool:
    """Whether `encoder_weights` names a file rather than None (random) or "imagenet" (downloaded)."""
    return encoder_weights not in (None, "imagenet")


def check_encoder_weights(encoder_weights: str | None) -> None:
    """A one-line error for a local encoder weights file (or classification run folder) that is not there."""
    if is_local_weights(encoder_weights) and not Path(encoder_weights).exists():
        raise PretrainedWeightsError(f"{encoder_weights}: encoder weights file not found")


def create_segmenter(encoder_name: str = "resnet50", encoder_weights: str | None = None, in_channels: int = 3) -> nn.Module:
    """A binary UNet (one logit per pixel) from segmentation-models-pytorch.

    `encoder_weights`: "imagenet" (smp downloads them), None (random init), the path of a local
    ImageNet checkpoint for offline machines, or a classification checkpoint or run folder whose
    classifier has the encoder's architecture (an encoder pretrained on MRI)."""
    import segmentation_models_pytorch as smp

    if encoder_name not in smp.encoders.encoders:
        raise UserError(f"unknown encoder '{encoder_name}': use a name from segmentation_models_pytorch.encoders.encoders")
    check_encoder_weights(encoder_weights)
    local_file = is_local_weights(encoder_weights)
    try:
        model = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None if local_file else encoder_weights,
            in_channels=in_channels,
            classes=1,
        )
    except (OSError, RuntimeError, ConnectionError) as error:
        raise PretrainedWeightsError(
            f"could not download '{encoder_weights}' weights for encoder '{encoder_name}' "
            f"({type(error).__name__}); on an offline machine set model.init_args.encoder_weights to a local "
            "checkpoint file (torchvision or timm layout), or to null to train from scratch"
        ) from error
    if local_file:
        load_encoder_weights(model.encoder, encoder_weights, encoder_name)
    return model
