"""DataModule for the two Kaggle brain-tumor classification datasets.

Both layouts are ROOT/Training/<class>/*.jpg plus an optional ROOT/Testing/<class>/*.jpg;
they differ only in folder names, which map onto the same four canonical classes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from datamodules.common import (
    CachedDataModule,
    CachedDataset,
    build_transform,
    default_geometric_augmentations,
    find_duplicate_groups,
    list_images,
    load_images,
)
from datamodules.errors import DatasetError

CLASS_NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")
NO_TUMOR_CLASS = CLASS_NAMES.index("no_tumor")
FOLDER_TO_CLASS = {
    "glioma": 0, "glioma_tumor": 0,
    "meningioma": 1, "meningioma_tumor": 1,
    "notumor": 2, "no_tumor": 2,
    "pituitary": 3, "pituitary_tumor": 3,
}  # fmt: skip


def find_split_folder(root: Path, name: str) -> Path | None:
    """ROOT/Training or ROOT/training, whichever exists."""
    matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if matches else None


def scan_class_folders(split_dir: Path) -> tuple[list[Path], list[int]]:
    """Image paths and canonical labels under split_dir/<class folder>/."""
    paths: list[Path] = []
    labels: list[int] = []
    seen_classes: set[int] = set()
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if folder.name.lower() not in FOLDER_TO_CLASS:
            raise DatasetError(
                f"{folder}: unknown class folder '{folder.name}'; expected one of {sorted(FOLDER_TO_CLASS)}"
            )
        images = list_images(folder)
        if not images:
            raise DatasetError(f"{folder}: class folder holds no images")
        label = FOLDER_TO_CLASS[folder.name.lower()]
        seen_classes.add(label)
        paths += images
        labels += [label] * len(images)
    missing = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if c not in seen_classes]
    if missing:
        raise DatasetError(f"{split_dir}: no folder for class(es) {missing}")
    return paths, labels


def check_every_class_readable(split_dir: Path, labels: np.ndarray) -> None:
    """A class whose every image was unreadable is as unusable as a missing class folder."""
    empty = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if not np.any(labels == c)]
    if empty:
        raise DatasetError(f"{split_dir}: no readable image for class(es) {empty} (every one was skipped)")


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split that keeps each class's share and never puts one group on both sides."""
    rng = np.random.default_rng(seed)
    group_ids, first_member = np.unique(groups, return_index=True)
    group_labels = labels[first_member]
    val_groups: list[int] = []
    for label in np.unique(labels):
        candidates = group_ids[group_labels == label]
        rng.shuffle(candidates)
        target = round(val_fraction * np.sum(labels == label))
        taken = 0
        for group in candidates:
            if taken >= target:
                break
            val_groups.append(group)
            taken += int(np.sum(groups == group))
    is_val = np.isin(groups, val_groups)
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


class ImageLabelDataset(CachedDataset):
    """Cached uint8 images (N, H, W, C) with integer labels; transforms run per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        super().__init__(transform)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[index])["image"], int(self.labels[index])


class ClassificationDataModule(CachedDataModule):
    """Brain-tumor MRI classification data with a leakage-free validation split.

    Args:
        root: dataset folder holding Training/ (and optionally Testing/).
        image_size: images are resized to image_size x image_size.
        channels: 1 reads MRI slices as grayscale, 3 as RGB (for ImageNet backbones).
        val_fraction: share of each class held out from Training for validation.
        duplicates: "remove" drops exact and near copies from the later split
            (val after train, test after both); "keep" only reports them.
        max_phash_distance: perceptual hashes this many bits apart or fewer count as the
            same image (re-encoded or re-saved copies); None checks exact bytes only.
        augment: flips, affine jitter and brightness/contrast on training images.
        **kwargs: batch size, seed (of the validation split too) and DataLoader options of `CachedDataModule`.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        channels: Literal[1, 3] = 1,
        val_fraction: float = 0.15,
        duplicates: Literal["remove", "keep"] = "remove",
        max_phash_distance: int | None = 2,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < val_fraction < 1:
            raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        self.root = Path(root)
        self.channels = channels

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data root does not exist or is not a folder")
        training_dir = find_split_folder(self.root, "Training")
        if training_dir is None:
            raise DatasetError(f"{self.root}: no Training/ folder (expected ROOT/Training/<class>/*.jpg)")
        paths, labels = scan_class_folders(training_dir)
        num_training = len(paths)
        testing_dir = find_split_folder(self.root, "Testing")
        if testing_dir is not None:
            test_paths, test_labels = scan_class_folders(testing_dir)
            paths, labels = paths + test_paths, labels + test_labels

        kept, kept_indices = load_images(paths, hp.image_size, self.channels)
        labels_arr = np.asarray(labels)[kept_indices]
        is_test = kept_indices >= num_training
        check_every_class_readable(training_dir, labels_arr[~is_test])
        if testing_dir is not None:
            check_every_class_readable(testing_dir, labels_arr[is_test])
        unreadable = len(paths) - len(kept)
        images = np.stack([item.pixels for item in kept])
        sha1s = [item.sha1 for item in kept]

        groups = find_duplicate_groups(sha1s, [item.phash for item in kept], hp.max_phash_distance)
        keep = self._deduplicate(sha1s, groups, labels_arr, is_test)
        train_pool = np.nonzero(keep & ~is_test)[0]
        train_rel, val_rel = stratified_group_split(labels_arr[train_pool], groups[train_pool], hp.val_fraction, hp.seed)
        split_indices = {"train": train_pool[train_rel], "val": train_pool[val_rel]}
        if testing_dir is not None:
            split_indices["test"] = np.nonzero(keep & is_test)[0]
            if not len(split_indices["test"]):
                raise DatasetError(f"{testing_dir}: every image copies a Training image; nothing is left to test "
                                   "(data.duplicates: keep keeps them)")  # fmt: skip

        train_transform = build_transform(default_geometric_augmentations() if hp.augment else [], self.channels)
        eval_transform = build_transform([], self.channels)
        for split, indices in split_indices.items():
            transform = train_transform if split == "train" else eval_transform
            self.datasets[split] = ImageLabelDataset(images[indices], labels_arr[indices], transform)
        counts = {split: np.bincount(ds.labels, minlength=len(CLASS_NAMES)).tolist() for split, ds in self.datasets.items()}
        rank_zero_info(
            f"Classification data {self.root}: {unreadable} unreadable skipped; "
            f"per-class counts {dict(zip(CLASS_NAMES, zip(*counts.values())))} for splits {list(counts)}"
        )

    def _deduplicate(self, sha1s: list[str], groups: np.ndarray, labels: np.ndarray, is_test: np.ndarray) -> np.ndarray:
        """Mask of images to keep: later copies of an exact or near duplicate are dropped.

        Training copies are grouped before the val split, so val is duplicate-free by
        construction; test images that copy any training image are leaks."""
        hp = self.hparams
        keep = np.ones(len(sha1s), dtype=bool)
        first_of_sha1: dict[str, int] = {}
        conflicting = 0
        for i, digest in enumerate(sha1s):
            first = first_of_sha1.setdefault(digest, i)
            if first != i:
                keep[i] = False
                conflicting += int(labels[first] != labels[i])
        exact_copies = int((~keep).sum())
        leaked = keep & is_test & np.isin(groups, groups[~is_test])
        num_groups = int((np.unique(groups, return_counts=True)[1] > 1).sum())
        rank_zero_info(
            f"Duplicates: {num_groups} groups of identical or near-identical images "
            f"(phash distance <= {hp.max_phash_distance}); {exact_copies} exact copies "
            f"({conflicting} with a different label), {int(leaked.sum())} test images matching Training"
            + ("; removed from the later split" if hp.duplicates == "remove" else "; kept (duplicates=keep)")
        )
        if hp.duplicates == "keep":
            return np.ones(len(sha1s), dtype=bool)
        return keep & ~leaked
