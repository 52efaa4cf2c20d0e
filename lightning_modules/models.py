"""Classifier factory: the project's residual CNN, or any timm model by name."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


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


class ResidualCNN(nn.Module):
    """A small ResNet for training from scratch on a few thousand images.

    Splits into `forward_features` and `forward_head` as timm models do, so Grad-CAM
    works the same on both.

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
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(channels, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


LOCAL_MODELS = {"residual_cnn": ResidualCNN}


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be downloaded; the message says how to use a local file."""


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
    if name in LOCAL_MODELS:
        if pretrained or weights_path:
            raise ValueError(f"model '{name}' is trained from scratch; it has no pretrained weights")
        return LOCAL_MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    if not timm.is_model(name):
        raise ValueError(f"unknown model '{name}': use 'residual_cnn' or a name from timm.list_models()")
    overlay = None
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"{weights_path}: pretrained weights file not found")
        overlay = {"file": str(weights_path)}
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
        raise ValueError(
            f"model_kwargs {kwargs} do not fit timm model '{name}' ({error}); set model.init_args.model_kwargs "
            "to {} or to that model's own arguments"
        ) from error
    except (OSError, RuntimeError) as error:
        if weights_path:
            raise
        raise PretrainedWeightsError(
            f"could not download pretrained weights for '{name}' ({type(error).__name__}); "
            "on an offline machine pass model.init_args.weights_path=/path/to/weights (.pth or .safetensors)"
        ) from error


HEAD_PREFIXES = ("fc.", "classifier.", "head.")
WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load an ImageNet checkpoint (torchvision or timm key layout) into an smp encoder.

    Classification heads are dropped and wrapper prefixes stripped; anything else that
    does not match is an error naming the file, so a wrong checkpoint never half-loads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    cleaned = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if not key.startswith(HEAD_PREFIXES):
            cleaned[key] = value
    # nn.Module's own method: smp encoders override it and return nothing
    missing, unexpected = nn.Module.load_state_dict(encoder, cleaned, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit this encoder ({len(missing)} weights missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )


def create_segmenter(encoder_name: str = "resnet50", encoder_weights: str | None = None, in_channels: int = 3) -> nn.Module:
    """A binary UNet (one logit per pixel) from segmentation-models-pytorch.

    `encoder_weights`: "imagenet" (smp downloads them), None (random init), or the path of
    a local ImageNet checkpoint for offline machines."""
    import segmentation_models_pytorch as smp

    local_file = encoder_weights not in (None, "imagenet")
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
        load_encoder_weights(model.encoder, encoder_weights)
    return model
