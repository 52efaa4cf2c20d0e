"""Network factories: the classifier (the project's residual CNN, or any timm model by name)
and the segmenter (an smp UNet), each optionally from pretrained weights (lightning_modules.pretrained)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from common.errors import UserError
from lightning_modules.pretrained import load_classifier_weights, load_encoder_weights


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
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(channels, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class MobileNetV2Classifier(PooledClassifier):
    """torchvision's MobileNetV2 with timm's `forward_features` / `forward_head` split, for 1- or
    3-channel images. Its features can start from a local ImageNet file in torchvision's layout
    (`weights_path`), so an ImageNet-pretrained classifier trains offline.

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
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(self.num_features, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


LOCAL_MODELS = {"residual_cnn": ResidualCNN, "mobilenet_v2": MobileNetV2Classifier}
TAKES_WEIGHTS_FILE = {"mobilenet_v2"}  # local networks that can start from a weights file


def check_pretrained_source(name: str, pretrained: bool, weights_path: str | None) -> None:
    """Fail early, at construction, on pretrained options that can never work for this classifier.
    (Whether the weights file exists is checked when they are loaded: a resumed run needs no file.)"""
    local = name in LOCAL_MODELS
    if local and pretrained:
        raise UserError(f"model '{name}' downloads no weights; give a local file as weights_path, if it takes one")
    if local and weights_path and name not in TAKES_WEIGHTS_FILE:
        raise UserError(f"model '{name}' is trained from scratch; it has no pretrained weights")


def create_classifier(
    name: str = "residual_cnn",
    num_classes: int = 4,
    in_chans: int = 1,
    pretrained: bool = False,
    weights_path: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a classifier by name, "residual_cnn" or any `timm.list_models()` name, as timm's
    `create_model` does: the network first, then (`pretrained` from the hub, or `weights_path`
    from a local file) pretrained weights loaded into it."""
    check_pretrained_source(name, pretrained, weights_path)
    if name in LOCAL_MODELS:
        model = LOCAL_MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    elif not timm.is_model(name):
        raise UserError(f"unknown model '{name}': use 'residual_cnn' or a name from timm.list_models()")
    else:
        try:
            model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
        except TypeError as error:  # configs/cls.yaml's model_kwargs are the residual CNN's
            if not kwargs:
                raise
            raise UserError(
                f"model_kwargs {kwargs} do not fit timm model '{name}' ({error}); set model.init_args.model_kwargs "
                "to {} or to that model's own arguments"
            ) from error
    if pretrained or weights_path:
        load_classifier_weights(model, name, pretrained, weights_path)
    return model


class MeanOfLogits(nn.Module):
    """An ensemble of networks of one input and output layout: its logits are the mean of theirs.

    Of classifiers, it splits as timm's do: `forward_features` gives the members' features (a list),
    `forward_head` the mean of their logits or, with `pre_logits`, their pooled features side by side
    (`num_features` in all), on which the familiarity model is fitted."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [member.forward_features(x) for member in self.members]

    def forward_head(self, features: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        outputs = [member.forward_head(part, pre_logits=pre_logits) for member, part in zip(self.members, features)]
        return torch.cat(outputs, dim=1) if pre_logits else torch.stack(outputs).mean(dim=0)

    @property
    def num_features(self) -> int:
        return sum(getattr(member, "head_hidden_size", None) or member.num_features for member in self.members)


def mean_of_logits(networks: list[nn.Module]) -> nn.Module:
    """One network as it is; several as the ensemble of the mean of their logits."""
    return networks[0] if len(networks) == 1 else MeanOfLogits(networks)


def create_segmenter(
    encoder_name: str = "resnet50", encoder_weights: str | None = None, in_channels: int = 3, arch: str = "unet"
) -> nn.Module:
    """A binary segmenter (one logit per pixel) from segmentation-models-pytorch: `arch` (a key of
    smp.MODEL_ARCHITECTURES_MAPPING: "unet", "unetplusplus", "fpn", ...) on the encoder `encoder_name`,
    then loaded from `encoder_weights` (lightning_modules.pretrained.load_encoder_weights) unless None."""
    import segmentation_models_pytorch as smp

    if encoder_name not in smp.encoders.encoders:
        raise UserError(
            f"unknown encoder '{encoder_name}': use a name from segmentation_models_pytorch.encoders.encoders"
        )
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise UserError(f"unknown arch '{arch}': use one of {', '.join(smp.MODEL_ARCHITECTURES_MAPPING)}")
    model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels, classes=1)
    if encoder_weights is not None:
        load_encoder_weights(model.encoder, encoder_name, encoder_weights)
    return model
