"""DataModule for the Roboflow COCO export of "Brain Tumor Image DataSet: Semantic Segmentation".

Layout: ROOT/{train,valid,test}/ each with images and `_annotations.coco.json`; test/ is
optional (the validation split stands in). Every tumor annotation of an image, polygon or
RLE, is rasterised into one binary mask at the image's own size, then resized (nearest)."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from pycocotools.coco import COCO

from datamodules.common import (
    CachedDataModule,
    CachedDataset,
    build_transform,
    default_geometric_augmentations,
    list_images,
    load_images,
)
from datamodules.errors import ConfigError, DatasetError, check_range

ANNOTATION_FILE = "_annotations.coco.json"
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "segmentation"),
}


@dataclass
class CocoSplitReport:
    """What reading one split found; logged so that data problems are visible."""

    images: int = 0
    empty_masks: int = 0
    missing_files: list[str] = field(default_factory=list)
    unlisted_files: int = 0
    degenerate_polygons: int = 0
    crowd_annotations: int = 0
    category_ids: Counter = field(default_factory=Counter)

    def summary(self, split: str) -> str:
        return (
            f"{split}: {self.images} images, {self.empty_masks} with an empty mask, "
            f"{len(self.missing_files)} annotated files missing, {self.unlisted_files} image files not in the "
            f"annotations (ignored), {self.degenerate_polygons} degenerate polygons (<3 points) skipped, "
            f"{self.crowd_annotations} RLE/crowd annotations, category ids {dict(sorted(self.category_ids.items()))}"
        )


def load_coco(annotation_file: Path) -> COCO:
    """pycocotools' index over a file checked to be COCO, with errors that name the file."""
    if not annotation_file.is_file():
        raise DatasetError(f"{annotation_file}: annotation file missing")
    try:
        data = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{annotation_file}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise DatasetError(f"{annotation_file}: not a COCO file (needs 'images' and 'annotations' lists)")
    for section, keys in REQUIRED_KEYS.items():
        for position, entry in enumerate(data[section]):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                name = entry.get("id", f"#{position}") if isinstance(entry, dict) else f"#{position}"
                raise DatasetError(f"{annotation_file}: {section[:-1]} {name} has no {', '.join(map(repr, missing))}")
    data.setdefault("categories", [])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def rasterise(coco: COCO, image_id: int, report: CocoSplitReport, category_ids: set[int] | None) -> np.ndarray:
    """Union of an image's tumor annotations as a HxW uint8 {0, 1} mask."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        if category_ids is not None and ann["category_id"] not in category_ids:
            continue
        report.category_ids[ann["category_id"]] += 1
        segmentation = ann.get("segmentation")
        if ann.get("iscrowd"):
            report.crowd_annotations += 1
        elif isinstance(segmentation, list):
            # frPyObjects fails on empty or <3-point polygons; a polygon needs 6 coordinates
            polygons = [p for p in segmentation if len(p) >= 6]
            report.degenerate_polygons += len(segmentation) - len(polygons)
            if not polygons:
                continue
            ann = {**ann, "segmentation": polygons}
        mask |= coco.annToMask(ann).astype(np.uint8)
    return mask


def read_coco_split(
    split_dir: Path, category_names: list[str] | None
) -> tuple[list[Path], list[np.ndarray], CocoSplitReport]:
    """Image paths and full-size masks of one split folder, with what was found wrong."""
    coco = load_coco(split_dir / ANNOTATION_FILE)
    category_ids = None
    if category_names is not None:
        category_ids = {c["id"] for c in coco.dataset["categories"] if c["name"] in category_names}
    report = CocoSplitReport()
    paths, masks = [], []
    for image_id, info in coco.imgs.items():
        path = split_dir / info["file_name"]
        if not path.is_file():
            report.missing_files.append(info["file_name"])
            continue
        mask = rasterise(coco, image_id, report, category_ids)
        paths.append(path)
        masks.append(mask)
        report.empty_masks += int(not mask.any())
    listed = {p.name for p in paths} | set(report.missing_files)
    report.unlisted_files = sum(p.name not in listed for p in list_images(split_dir))
    report.images = len(paths)
    for name in report.missing_files[:5]:
        rank_zero_warn(f"{split_dir / name}: listed in {ANNOTATION_FILE} but missing, skipped")
    if not paths:
        raise DatasetError(
            f"{split_dir / ANNOTATION_FILE}: none of its {len(coco.imgs)} listed images is in {split_dir}"
        )
    return paths, masks, report


class ImageMaskDataset(CachedDataset):
    """Cached uint8 images (N, H, W, C) and masks (N, H, W); one joint transform per item."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, transform, files: list[str]) -> None:
        super().__init__(transform, files)
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[index], mask=self.masks[index])
        return out["image"], out["mask"].unsqueeze(0).float()  # ToTensorV2 leaves masks channel-less


class SegmentationDataModule(CachedDataModule):
    """Brain-tumor segmentation data from a Roboflow COCO export.

    Args:
        root: folder with train/, valid/ and optionally test/.
        image_size: images and masks are resized to image_size x image_size.
        channels: 3 reads RGB (ImageNet encoders), 1 grayscale.
        augment: flips, affine jitter (moving the mask too) and brightness/contrast (image only).
        category_names: annotation categories that count as tumor; None takes all.
        **kwargs: batch size and DataLoader options of `CachedDataModule`.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        channels: Literal[1, 3] = 3,
        augment: bool = True,
        category_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_range("image_size", image_size, 32)
        if image_size % 32:  # the UNet halves the resolution five times
            raise ConfigError(f"image_size must be a multiple of 32 for the UNet, got {image_size}")
        self.root = Path(root)
        self.channels = channels

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data root does not exist or is not a folder")
        splits = {s: self.root / folder for s, folder in SPLIT_FOLDERS.items() if (self.root / folder).is_dir()}
        for required in ("train", "val"):
            if required not in splits:
                raise DatasetError(
                    f"{self.root}: no {SPLIT_FOLDERS[required]}/ folder (expected ROOT/{{train,valid,test}}/)"
                )
        train_transform = build_transform(default_geometric_augmentations() if hp.augment else [], self.channels)
        eval_transform = build_transform([], self.channels)
        for split, folder in splits.items():
            paths, masks, report = read_coco_split(folder, hp.category_names)
            loaded, kept = load_images(paths, hp.image_size, self.channels)
            if not loaded:
                raise DatasetError(f"{folder}: none of its {len(paths)} annotated images is readable")
            masks = [masks[i] for i in kept]
            if split == "train" and not any(mask.any() for mask in masks):
                raise DatasetError(
                    f"{folder / ANNOTATION_FILE}: every mask is empty; no tumor annotations to learn from"
                )
            size = (hp.image_size, hp.image_size)
            resized_masks = np.stack([cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) for mask in masks])
            transform = train_transform if split == "train" else eval_transform
            files = [str(paths[i]) for i in kept]
            self.datasets[split] = ImageMaskDataset(
                np.stack([item.pixels for item in loaded]), resized_masks, transform, files
            )
            rank_zero_info(f"Segmentation data {report.summary(split)}, {len(paths) - len(loaded)} unreadable skipped")
