"""The albumentations pipelines of both tasks: the normalization every split shares and the
training augmentation recipes, by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from common.errors import ConfigError
from datamodules.contrast import HeadGray, RandomIntensityCurve, RandomSkullStrip


def imagenet_normalization(channels: int) -> A.Normalize:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return A.Normalize(mean=mean, std=std)


def build_transform(
    augmentations: Sequence[A.BasicTransform], channels: int, head_gray: int | None = None
) -> A.Compose:
    """The head's median brought to `head_gray` (None: the slice's gray levels as they are), augmentations
    (train only), then the normalization every split shares."""
    standard = [HeadGray(head_gray)] if head_gray is not None else []
    return A.Compose([*standard, *augmentations, imagenet_normalization(channels), ToTensorV2()])


def light_augmentations() -> list[A.BasicTransform]:
    """Flips and small affine jitter: MRI slices vary in position and orientation across scanners."""
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


def strong_augmentations() -> list[A.BasicTransform]:
    """After nnU-Net's training augmentations (Isensee et al., 2021), for models that overfit the light
    recipe: its scaling range (0.7-1.4), and its noise, blur, brightness, contrast, low-resolution and
    gamma transforms with its ranges and probabilities (noise as a share of the intensity range, not of
    a z-scored image). Unlike nnU-Net, rotation stays within 30 degrees (slices have a top), the affine
    jitter comes in 70% of draws as in the light recipe, and there is no elastic deformation."""
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.7, 1.4), translate_percent=(-0.1, 0.1), rotate=(-30, 30), p=0.7),
        A.GaussNoise(std_range=(0.0, 0.1), p=0.1),
        A.GaussianBlur(sigma_limit=(0.5, 1.0), p=0.2),
        A.MultiplicativeNoise(multiplier=(0.75, 1.25), p=0.15),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.25, p=0.15),
        # Area-averaged down, linear up: a coarser scan. cv2's nearest neighbour would shift the image against its mask.
        A.Downscale(
            scale_range=(0.5, 1.0),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=0.25,
        ),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
    ]


def sequence_augmentations() -> list[A.BasicTransform]:
    """The light recipe, for models that must hold up on sequences, scanners and sources they never saw:
    slices upside down or turned (Br35H holds such), random gamma and intensity curves that turn one
    contrast into another (datamodules.contrast), and brain-only views as skull-stripped data ship."""
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomRotate90(p=0.2),
        A.VerticalFlip(p=0.1),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.7),
        RandomSkullStrip(p=0.2),
        RandomIntensityCurve(p=0.4),
        A.RandomGamma(gamma_limit=(60, 170), p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


AUGMENTATIONS: dict[str, Callable[[], list[A.BasicTransform]]] = {
    "light": light_augmentations,
    "strong": strong_augmentations,
    "sequences": sequence_augmentations,
}


def check_augment(augment: bool | str) -> None:
    """One line naming the recipes when `augment` is a name none of them has."""
    if isinstance(augment, str) and augment not in AUGMENTATIONS:
        raise ConfigError(f"augment '{augment}': use true, false or one of {', '.join(AUGMENTATIONS)}")


def training_augmentations(augment: bool | str) -> list[A.BasicTransform]:
    """The training images' augmentations: True is the light recipe, False none, a name one of AUGMENTATIONS."""
    check_augment(augment)
    if augment is False:
        return []
    return AUGMENTATIONS["light" if augment is True else augment]()
