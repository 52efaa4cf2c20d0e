"""Augmentations that turn one MRI sequence, scanner or preprocessing into another, so that a model
learns the tumour and not the look of its source: random intensity curves (monotone, inverted or
neither: a T1 slice made T2- or FLAIR-like) and skull-stripped views (brain-only slices, as BraTS
and most research data ship). albumentations has monotone tone curves and whole-image inversion, both
of which move the black background; these keep it black, as every sequence shows it."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

BACKGROUND_LEVEL = 0.08  # of the slice's brightest value: below it a pixel is air
# The median gray level inside the head of the training slices (figshare 68, SARTAJ 72, Masoud 73; LGG's sequences
# 47-53; Br35H 131: scripts/head_gray_levels.py): where HeadGray and the scans' window put every head.
HEAD_GRAY = 70


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head: the largest bright region of a slice (H, W) with its holes filled."""
    smooth = cv2.GaussianBlur(image, (5, 5), 0)
    inside = (smooth > BACKGROUND_LEVEL * max(int(smooth.max()), 1)).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(inside)
    if count < 2:
        return inside.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    head = (components == largest).astype(np.uint8)
    contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(head, contours, -1, 1, cv2.FILLED).astype(bool)


class RandomIntensityCurve(A.ImageOnlyTransform):
    """Remaps gray levels through a random piecewise-linear curve through (0, 0) with `knots` inner knots:
    monotone increasing, decreasing (an inversion of the head, the air left black) or neither, each a
    third of the time. Every channel gets the same curve (grayscale slices stored as RGB stay gray)."""

    def __init__(self, knots: int = 4, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.knots = knots

    def get_params(self) -> dict:
        levels = self.random_generator.uniform(0, 1, self.knots + 1)
        kind = self.random_generator.integers(3)
        if kind == 0:
            levels = np.sort(levels)
        elif kind == 1:
            levels = np.sort(levels)[::-1]
        xs = np.linspace(0, 255, self.knots + 2)
        table = np.interp(np.arange(256), xs, np.concatenate([[0.0], levels]) * 255)
        return {"table": np.clip(table, 0, 255).astype(np.uint8)}

    def apply(self, img: np.ndarray, table: np.ndarray, **params) -> np.ndarray:
        gray = img if img.shape[-1] == 1 else img[..., :1]
        air = ~head_mask(np.ascontiguousarray(gray[..., 0]))
        out = cv2.LUT(img, table).reshape(img.shape)
        out[air] = 0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("knots",)


class RandomSkullStrip(A.ImageOnlyTransform):
    """A brain-only view: the head's outer `margin` (a random share of the slice's width) blacked out,
    which removes skull and scalp on most axial slices. Image only: a tumour under the margin keeps its
    mask, as a real brain mask would not cut a tumour."""

    def __init__(self, margin: tuple[float, float] = (0.04, 0.09), p: float = 0.2) -> None:
        super().__init__(p=p)
        self.margin = margin

    def get_params(self) -> dict:
        return {"share": float(self.random_generator.uniform(*self.margin))}

    def apply(self, img: np.ndarray, share: float, **params) -> np.ndarray:
        head = head_mask(np.ascontiguousarray(img[..., 0])).astype(np.uint8)
        size = 2 * max(1, round(share * img.shape[1])) + 1  # a disc whose radius is the margin
        brain = cv2.erode(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)
        out = img.copy()
        out[~brain] = 0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("margin",)


class HeadGray(A.ImageOnlyTransform):
    """A slice's gray levels scaled, black staying black, so that the median inside its head is `gray`: a source
    whose slices are twice as bright as the training slices (Br35H's heads sit at 131) reaches the model like
    them. Not random: a model that trains with it sees it at inference too (the datamodule's `head_gray`)."""

    def __init__(self, gray: int = HEAD_GRAY, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.gray = gray

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        head = head_mask(np.ascontiguousarray(img[..., 0]))
        median = float(np.median(img[head])) if head.any() else 0.0
        if median < 1:  # a blank slice: nothing to scale by
            return img
        return np.clip(np.round(img * (self.gray / median)), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gray",)
