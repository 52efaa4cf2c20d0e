"""DataModule for tumour segmentation from every source a user has (datamodules.mask_sources),
merged: a Roboflow COCO export, image/mask folders, figshare .mat slices, masks beside images,
healthy slices (`negatives`) whose masks are empty, and box-labelled sources (`boxes`) as weak labels.

A source with its own split (the COCO export) keeps it; the images of the others get a seeded
validation split, stratified by class and grouped by patient and by copies (exact or near, by
perceptual hash, across all sources), so that no patient and no image is on both sides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.errors import ConfigError, DatasetError, check_range
from datamodules.base import CachedDataModule, CachedDataset
from datamodules.fingerprints import Fingerprints, find_duplicate_groups
from datamodules.images import LoadedImage, file_of, load_in_threads
from datamodules.mask_sources import (
    BOX_INTERIOR,
    LGG_SEQUENCES,
    NO_TUMOR,
    TUMOR,
    MaskedImage,
    Source,
    healthy_slices,
    load_masked_image,
    read_source,
)
from datamodules.splits import merged_groups, same_patient, stratified_group_split
from datamodules.transforms import check_augment, training_augmentations

SPLITS = ("train", "val", "test")


class ImageMaskDataset(CachedDataset):
    """Cached uint8 images (N, H, W, C) and masks (N, H, W); one joint transform per item."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        transform,
        files: list[str],
        labels: list[str] | None = None,
        root_of: np.ndarray | None = None,
    ) -> None:
        super().__init__(transform, files)
        self.images, self.masks = images, masks
        self.labels = labels or [TUMOR if mask.any() else NO_TUMOR for mask in masks]  # the class of each slice
        # The index of the data root each slice came from, in the datamodule's `source_roots` (0 for all without).
        self.root_of = np.zeros(len(images), dtype=int) if root_of is None else root_of

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[index], mask=self.masks[index])
        return out["image"], out["mask"].unsqueeze(0).float()  # ToTensorV2 leaves masks channel-less


class SegmentationDataModule(CachedDataModule):
    """Brain-tumour segmentation data with a leakage-free validation split.

    Args:
        root: a source folder (any layout of datamodules.mask_sources), or a list of them, merged.
        negatives: healthy slices: classification dataset roots or no-tumour class folders (their
            Training/ split), whose images become empty masks, so the model learns that most slices
            hold no tumour.
        boxes: box-labelled sources (any layout; e.g. the Roboflow COCO export, whose polygons are all
            boxes) as weak labels, for training only (their own validation and test splits are left out,
            so validation scores real outlines): pixels outside every box are background, those inside a
            box get the mask value BOX_INTERIOR, which the segmenter's losses ignore but for the box's
            rows and columns (`SegmentationModule(box_weight=...)`).
        image_size: images and masks are resized to image_size x image_size (a multiple of 32).
        crop_size: train on random crop_size x crop_size crops of those (a multiple of 32; a tumour
            slice's crop holds part of its tumour): the detail of image_size at the cost per step of
            crop_size. Validation, evaluation and inference see whole images. None: whole images.
        healthy_share: the share of healthy slices among an epoch's training draws (as many draws, with
            replacement, as the training split has images); None: each training image once an epoch,
            so healthy slices come as often as the split holds them.
        channels: 3 reads RGB (ImageNet encoders), 1 grayscale.
        augment: the training images' augmentations: true (flips and affine jitter, moving the mask too, and
            brightness/contrast, image only), false, or a recipe of datamodules.transforms.AUGMENTATIONS ("light" is
            true, "strong" nnU-Net's wider affine range with noise, blur, low resolution and gamma).
        category_names: COCO annotation categories that count as tumor; None takes all.
        val_fraction: share of the images of sources without a split of their own held out for validation.
        max_phash_distance: perceptual hashes this many bits apart or fewer count as the same image
            (grouped in the split); None checks exact bytes only.
        near_copies_join_patients: whether a near copy (not an exact one) of another known patient's slice joins
            the two patients in the split. True was the rule until 2026-12-05, which models saved before then keep:
            look-alike slices at the ends of volumes then chained most of LGG's patients into one group.
        sequences: of a multi-sequence (LGG) slice, the sequences read, each as a grayscale slice of its own with
            the slice's mask (t1, flair, t1c): users hold one sequence per slice.
        **kwargs: batch size, seed (of the validation split too) and DataLoader options of `CachedDataModule`.
    """

    def __init__(
        self,
        root: str | list[str],
        negatives: str | list[str] | None = None,
        boxes: str | list[str] | None = None,
        image_size: int = 256,
        crop_size: int | None = None,
        healthy_share: float | None = None,
        channels: Literal[1, 3] = 3,
        augment: bool | str = True,
        category_names: list[str] | None = None,
        val_fraction: float = 0.15,
        max_phash_distance: int | None = 2,
        near_copies_join_patients: bool = False,
        sequences: list[str] = list(LGG_SEQUENCES),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_range("image_size", image_size, 32)
        check_range("crop_size", crop_size, 32, image_size)
        for name, size in (("image_size", image_size), ("crop_size", crop_size)):
            if size is not None and size % 32:  # the UNet halves the resolution five times
                raise ConfigError(f"{name} must be a multiple of 32 for the UNet, got {size}")
        check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
        check_range("healthy_share", healthy_share, 0, 1, low_open=True, high_open=True)
        check_range("max_phash_distance", max_phash_distance, 0, 64)
        check_augment(augment)
        self.roots, self.negatives, self.boxes = (
            [Path(r) for r in ([roots] if isinstance(roots, str) else roots or [])]
            for roots in (root, negatives, boxes)
        )
        self.channels = channels

    @property
    def root(self) -> Path:
        return self.roots[0]

    @property
    def source_roots(self) -> list[Path]:
        """Every folder it reads, in the order its datasets' `root_of` indices count them: the outlined
        roots, then the healthy slices' and the box-labelled ones."""
        return [*self.roots, *self.negatives, *self.boxes]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        sources = [read_source(root, category_names=hp.category_names, sequences=hp.sequences) for root in self.roots]
        sources += [Source(root, "healthy slices", healthy_slices(root)) for root in self.negatives]
        sources += [self._box_source(root) for root in self.boxes]
        items, loaded, masks, source_of = self._load(sources)
        for index in np.flatnonzero(source_of >= len(sources) - len(self.boxes)):
            masks[index] = masks[index] * BOX_INTERIOR
        if not any(mask.any() for mask, item in zip(masks, items) if item.split in ("train", None)):
            raise DatasetError(
                f"{', '.join(map(str, self.roots))}: every mask is empty; no tumour annotations to learn from"
            )
        split = self._split(items, loaded, source_of)
        self.training_fingerprints = Fingerprints.of(
            [loaded[i] for i in np.flatnonzero(np.isin(split, ["train", "val"]))]
        )
        # Cropping first keeps the augmentations' cost that of a crop; a crop holds tumour where there is one.
        crop = [A.CropNonEmptyMaskIfExists(hp.crop_size, hp.crop_size)] if hp.crop_size else []
        augmentations = training_augmentations(hp.augment)
        train_transform = self.split_transform(crop + augmentations)
        eval_transform = self.split_transform()
        for name in SPLITS:
            indices = np.flatnonzero(split == name)
            if len(indices):
                transform = train_transform if name == "train" else eval_transform
                self.datasets[name] = self._dataset([items[i] for i in indices], [loaded[i] for i in indices],
                                                    [masks[i] for i in indices], transform, source_of[indices])  # fmt: skip
        if "val" not in self.datasets:
            raise DatasetError(f"{', '.join(map(str, self.roots))}: nothing left for validation")
        if hp.healthy_share is not None and NO_TUMOR not in self.datasets["train"].labels:
            message = f"healthy_share {hp.healthy_share}: the training split has no healthy slices"
            raise ConfigError(f"{message}; add some with data.negatives")
        for index, source in enumerate(sources):
            mine = source_of == index
            counts = ", ".join(
                f"{int((mine & (split == name)).sum())} {name}" for name in SPLITS if (split == name).any()
            )
            tumours = sum(bool(masks[i].any()) for i in np.flatnonzero(mine))
            rank_zero_info(
                f"{source.root} ({source.layout}): {int(mine.sum())} images, {tumours} with a tumour; {counts}"
            )

    def sampling_weights(self, split: str) -> list[float] | None:
        share = self.hparams.healthy_share
        if share is None or split != "train":
            return None
        healthy = np.array(self.datasets[split].labels) == NO_TUMOR
        return np.where(healthy, share / healthy.sum(), (1 - share) / (~healthy).sum()).tolist()

    def _box_source(self, root: Path) -> Source:
        """A box-labelled source's training images (all of them when it has no split of its own)."""
        source = read_source(root, category_names=self.hparams.category_names, splits=["train"])
        images = [replace(item, split="train") for item in source.images]
        return Source(root, f"{source.layout}, box labels", images)

    def _load(self, sources: list[Source]) -> tuple[list[MaskedImage], list[LoadedImage], list[np.ndarray], np.ndarray]:
        items = [item for source in sources for item in source.images]
        source_of = np.repeat(np.arange(len(sources)), [len(source.images) for source in sources])
        results, kept = load_in_threads(items, lambda item: load_masked_image(item, self.hparams.image_size,
                                                                               self.channels), lambda item: item.path)  # fmt: skip
        folders = [
            (source, file_of(item.path).parent) for source, item in zip(source_of, items)
        ]  # a COCO split: a folder
        readable = {folders[i] for i in kept}
        for folder in dict.fromkeys(folders):
            if folder not in readable:
                raise DatasetError(f"{folder[1]}: none of its {folders.count(folder)} images is readable")
        return [items[i] for i in kept], [r[0] for r in results], [r[1] for r in results], source_of[kept]

    def _split(self, items: list[MaskedImage], loaded: list[LoadedImage], source_of: np.ndarray) -> np.ndarray:
        """Each image's split: its source's own, else the seeded split by class and group; an image
        grouped with one of a fixed split (a copy, the same patient) follows it."""
        hp = self.hparams
        patients = [f"{source}:{same_patient(item.patient)}" if item.patient else None
                    for source, item in zip(source_of, items)]  # fmt: skip
        copies = find_duplicate_groups([item.sha1 for item in loaded], [item.phash for item in loaded],
                                       hp.max_phash_distance, None if hp.near_copies_join_patients else patients)  # fmt: skip
        groups = merged_groups(copies, patients)
        split = np.array([item.split or "" for item in items], dtype=object)
        free = np.flatnonzero(split == "")
        labels = np.array([item.label for item in items])
        if len(free):
            train, val = stratified_group_split(labels[free], groups[free], hp.val_fraction, hp.seed)
            split[free[train]], split[free[val]] = "train", "val"
        for name in ("test", "val", "train"):  # the strongest claim last: an image seen in training stays there
            fixed_groups = groups[[i for i in range(len(items)) if items[i].split == name]]
            split[np.isin(groups, fixed_groups) & np.isin(np.arange(len(items)), free)] = name
        return split

    def _dataset(self, items: list[MaskedImage], loaded: list[LoadedImage], masks: list[np.ndarray],
                 transform, root_of: np.ndarray | None = None) -> ImageMaskDataset:  # fmt: skip
        labels = [item.label if mask.any() or item.label == NO_TUMOR else NO_TUMOR for item, mask in zip(items, masks)]
        images = np.stack([image.pixels for image in loaded])
        files = [str(item.path) for item in items]
        return ImageMaskDataset(images, np.stack(masks), transform, files, labels, root_of)

    def evaluation_images(self, root: str | Path) -> tuple[ImageMaskDataset, list[LoadedImage]]:
        """Every image of `root` with its mask (a COCO export's test/, else valid/; a classification
        dataset's no-tumour Testing/, else Training/ images), prepared as for training, for
        evaluation; with the loaded images, whose hashes tell copies of training images."""
        hp = self.hparams
        source = read_source(root, for_evaluation=True, category_names=hp.category_names, sequences=hp.sequences)
        items, loaded, masks, _ = self._load([source])
        return self._dataset(items, loaded, masks, self.split_transform()), loaded
