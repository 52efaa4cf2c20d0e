"""DataModule for brain-tumor classification, from every source that says what a slice holds.

The two Kaggle datasets are ROOT/Training/<class>/*.jpg plus an optional ROOT/Testing/<class>/*.jpg;
they differ only in folder names, which map onto the same four canonical classes. The figshare copy
lists its slices in ROOT/metadata.csv. Segmentation sources say less, and their labels say no more
(common.labels): the LGG set's slices are gliomas or tumour-free slices of glioma patients,
each of its sequences a slice of its own; VIA-outlined slices (Br35H) are tumours of unknown type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.errors import DatasetError, check_range
from common.labels import CLASS_NAMES, FOLDER_TO_CLASS, LABELS
from datamodules.base import CachedDataModule, CachedDataset
from datamodules.figshare import METADATA_FILE, read_metadata
from datamodules.fingerprints import Fingerprints, find_duplicate_groups
from datamodules.images import ImageSource, LoadedImage, list_images, load_images
from datamodules.mask_sources import LGG_SEQUENCES, find_layout, read_source
from datamodules.splits import merged_groups, same_patient, stratified_group_split
from datamodules.transforms import check_augment, training_augmentations


def find_split_folder(root: Path, name: str) -> Path | None:
    """ROOT/Training or ROOT/training, whichever exists."""
    matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if matches else None


@dataclass
class ClassFolders:
    """One split folder of one dataset root: its images and canonical labels."""

    root_index: int
    folder: Path
    is_test: bool
    paths: list[ImageSource]
    labels: np.ndarray  # indices into common.labels.LABELS
    patients: list[str | None] | None = None  # per image, where the dataset says
    every_class: bool = True  # a dataset of class folders has all four; a table may have only some


def read_metadata_table(root: Path, root_index: int = 0) -> ClassFolders:
    """ROOT/metadata.csv (`image,label,patient_id`, image paths relative to ROOT), as the figshare
    dataset's copies come: tumour classes only, and the patient of every slice."""
    rows = read_metadata(root, required=("image", "label"))
    unknown = sorted({row["label"] for row in rows} - set(FOLDER_TO_CLASS))
    if unknown:
        raise DatasetError(
            f"{root / 'metadata.csv'}: unknown label(s) {unknown}; expected one of {sorted(FOLDER_TO_CLASS)}"
        )
    labels = np.array([FOLDER_TO_CLASS[row["label"].lower()] for row in rows], dtype=np.int64)
    patients = [row.get("patient_id") or None for row in rows]
    return ClassFolders(root_index, root, False, [root / row["image"] for row in rows], labels, patients, False)


# The segmentation layouts whose slices say what they hold, and so are classification sources too.
LABELLED_MASK_LAYOUTS = ("LGG sequences", "VIA outlines", "NIfTI volumes")


def read_labelled_masks(root: Path, root_index: int, sequences: Sequence[str]) -> ClassFolders:
    """A segmentation source's slices with the labels it gives (LGG, VIA outlines, NIfTI cases), patients where known."""
    items = read_source(root, sequences=sequences).images
    labels = np.array([FOLDER_TO_CLASS[item.label] for item in items], dtype=np.int64)
    return ClassFolders(root_index, root, False, [item.path for item in items], labels,
                        [item.patient for item in items], False)  # fmt: skip


def find_class_folders(root: Path, root_index: int = 0, sequences: Sequence[str] = LGG_SEQUENCES) -> list[ClassFolders]:
    """ROOT/Training (required) and ROOT/Testing (optional), scanned; or ROOT/metadata.csv; or a
    segmentation source whose slices say what they hold (`sequences`: those read of an LGG slice)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: data root does not exist or is not a folder")
    if (root / METADATA_FILE).is_file() and find_split_folder(root, "Training") is None:
        return [read_metadata_table(root, root_index)]
    training_dir = find_split_folder(root, "Training")
    if training_dir is None:
        try:
            layout = find_layout(root)
        except DatasetError:
            layout = None
        if layout in LABELLED_MASK_LAYOUTS:
            return [read_labelled_masks(root, root_index, sequences)]
        raise DatasetError(
            f"{root}: no Training/ folder (expected ROOT/Training/<class>/*.jpg, ROOT/metadata.csv, "
            "an LGG download, VIA-outlined slices or NIfTI cases)"
        )
    splits = [(training_dir, False)]
    testing_dir = find_split_folder(root, "Testing")
    if testing_dir is not None:
        splits.append((testing_dir, True))
    return [ClassFolders(root_index, folder, is_test, *scan_class_folders(folder)) for folder, is_test in splits]


def scan_class_folders(split_dir: Path, require_every_class: bool = True) -> tuple[list[Path], np.ndarray]:
    """Image paths and canonical labels under split_dir/<class folder>/ (every class needs one,
    unless `require_every_class` is off, as for a folder that is only evaluated)."""
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
    if missing and (require_every_class or not seen_classes):
        raise DatasetError(f"{split_dir}: no folder for class(es) {missing}")
    return paths, np.asarray(labels, dtype=np.int64)


def check_every_class_readable(split_dir: Path, labels: np.ndarray) -> None:
    """A class whose every image was unreadable is as unusable as a missing class folder."""
    empty = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if not np.any(labels == c)]
    if empty:
        raise DatasetError(f"{split_dir}: no readable image for class(es) {empty} (every one was skipped)")


class ImageLabelDataset(CachedDataset):
    """Cached uint8 images (N, H, W, C) with integer labels, the fingerprint of each (which tells
    copies among them) and the index of the data root each came from (0 for all without `root_of`);
    transforms run per item."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform,
        files: list[str],
        fingerprints: Fingerprints,
        root_of: np.ndarray | None = None,
    ) -> None:
        super().__init__(transform, files)
        self.images, self.labels, self.fingerprints = images, labels, fingerprints
        self.root_of = np.zeros(len(labels), dtype=int) if root_of is None else root_of

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[index])["image"], int(self.labels[index])


class ClassificationDataModule(CachedDataModule):
    """Brain-tumor MRI classification data with a leakage-free validation split.

    Args:
        root: dataset folder holding Training/ (and optionally Testing/), or a list of them: their
            images are merged into the four classes, and copies are found across them too.
        image_size: images are resized to image_size x image_size.
        channels: 1 reads MRI slices as grayscale, 3 as RGB (for ImageNet backbones).
        val_fraction: share of each class held out from Training for validation.
        duplicates: "remove" drops exact and near copies from the later split
            (val after train, test after both); "keep" only reports them.
        max_phash_distance: perceptual hashes this many bits apart or fewer count as the
            same image (re-encoded or re-saved copies); None checks exact bytes only.
        near_copies_join_patients: whether a near copy (not an exact one) of another known patient's slice joins
            the two patients in the split. True was the rule until 2026-12-05, which models saved before then keep:
            look-alike slices at the ends of volumes then chained most of LGG's patients into one group.
        augment: the training images' augmentations: true (flips, affine jitter and brightness/contrast),
            false, or a recipe of datamodules.transforms.AUGMENTATIONS ("light" is true, "strong" nnU-Net's).
        sequences: of a multi-sequence (LGG) slice, the sequences read, each as a grayscale slice of its own
            (t1, flair, t1c): users hold one sequence per slice.
        **kwargs: batch size, seed (of the validation split too) and DataLoader options of `CachedDataModule`.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | list[str],
        image_size: int = 128,
        channels: Literal[1, 3] = 1,
        val_fraction: float = 0.15,
        duplicates: Literal["remove", "keep"] = "remove",
        max_phash_distance: int | None = 2,
        near_copies_join_patients: bool = False,
        augment: bool | str = True,
        sequences: list[str] = list(LGG_SEQUENCES),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_range("image_size", image_size, 8)
        check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
        check_range("max_phash_distance", max_phash_distance, 0, 64)
        check_augment(augment)
        self.roots = [Path(r) for r in ([root] if isinstance(root, str) else root)]
        self.channels = channels

    @property
    def source_roots(self) -> list[Path]:
        """Every folder it reads, in the order its datasets' `root_of` indices count them: its roots."""
        return self.roots

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        # Every root's Training before any Testing: of two exact copies the first is kept, and when
        # a Testing image copies a Training image, the Testing one must be the one that goes.
        sources = sorted(
            (s for index, root in enumerate(self.roots) for s in find_class_folders(root, index, hp.sequences)),
            key=lambda source: source.is_test,
        )
        paths = [path for source in sources for path in source.paths]
        source_of = np.repeat(np.arange(len(sources)), [len(source.paths) for source in sources])

        kept, kept_indices = load_images(paths, hp.image_size, self.channels)
        source_of = source_of[kept_indices]
        labels = np.concatenate([source.labels for source in sources])[kept_indices]
        for index, source in enumerate(sources):
            if source.every_class:
                check_every_class_readable(source.folder, labels[source_of == index])
        is_test = np.array([sources[index].is_test for index in source_of], dtype=bool)
        root_of = np.array([sources[index].root_index for index in source_of])
        sha1s = [item.sha1 for item in kept]

        patients = [
            f"{source.root_index}:{same_patient(patient)}" if patient else None
            for source in sources
            for patient in (source.patients or [None] * len(source.paths))
        ]
        patients = [patients[i] for i in kept_indices]
        groups = find_duplicate_groups(
            sha1s,
            [item.phash for item in kept],
            hp.max_phash_distance,
            None if hp.near_copies_join_patients else patients,
        )
        if any(patients):  # a patient's slices, like an image's copies, stay on one side of the split
            groups = merged_groups(groups, patients)
        keep = self._deduplicate(sha1s, groups, labels, is_test)
        train_pool = np.nonzero(keep & ~is_test)[0]
        train_rel, val_rel = stratified_group_split(labels[train_pool], groups[train_pool], hp.val_fraction, hp.seed)
        split_indices = {"train": train_pool[train_rel], "val": train_pool[val_rel]}
        if is_test.any():
            split_indices["test"] = np.nonzero(keep & is_test)[0]
            if not len(split_indices["test"]):
                raise DatasetError(
                    f"{', '.join(str(s.folder) for s in sources if s.is_test)}: every image copies a "
                    "Training image; nothing is left to test (data.duplicates: keep keeps them)"
                )
        images = np.stack([item.pixels for item in kept])
        train_transform = self.split_transform(training_augmentations(hp.augment))
        eval_transform = self.split_transform()
        for split, indices in split_indices.items():
            transform = train_transform if split == "train" else eval_transform
            files = [str(paths[kept_indices[i]]) for i in indices]
            fingerprints = Fingerprints.of([kept[i] for i in indices])
            self.datasets[split] = ImageLabelDataset(
                images[indices], labels[indices], transform, files, fingerprints, root_of[indices]
            )
        self.training_fingerprints = Fingerprints.concatenate(
            [self.datasets["train"].fingerprints, self.datasets["val"].fingerprints]
        )
        for index, root in enumerate(self.roots):
            mine = root_of == index
            listed = sum(len(source.paths) for source in sources if source.root_index == index)
            rank_zero_info(
                f"{root}: {listed} images, {listed - int(mine.sum())} unreadable, {int((mine & ~keep).sum())} "
                f"dropped as copies, {int(np.isin(groups[mine], groups[~mine]).sum())} with a copy in another root"
            )
        counts = {split: np.bincount(ds.labels, minlength=len(LABELS)).tolist() for split, ds in self.datasets.items()}
        rank_zero_info(
            f"Classification data: per-class counts {dict(zip(LABELS, zip(*counts.values())))} "
            f"for splits {list(counts)}"
        )

    def evaluation_images(self, root: str | Path) -> tuple[ImageLabelDataset, list[LoadedImage]]:
        """Every labelled image under `root` (ROOT/<class>/, else ROOT/Testing/<class>/, else ROOT/Training/<class>/,
        else ROOT/metadata.csv, an LGG download, VIA-outlined slices or NIfTI cases), decoded and resized as for
        training, for evaluation; with the loaded images, whose hashes tell copies of training images."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: folder to evaluate does not exist or is not a folder")
        has_class_folders = any(p.is_dir() and p.name.lower() in FOLDER_TO_CLASS for p in root.iterdir())
        folder = (
            root if has_class_folders else find_split_folder(root, "Testing") or find_split_folder(root, "Training")
        )
        if folder is None:  # a table of slices, or a segmentation source that says what its slices hold
            table = find_class_folders(root, sequences=self.hparams.sequences)[0]
            folder, paths, labels = root, table.paths, table.labels
        else:
            paths, labels = scan_class_folders(folder, require_every_class=False)
        kept, kept_indices = load_images(paths, self.hparams.image_size, self.channels)
        if not kept:
            raise DatasetError(f"{folder}: none of its {len(paths)} images is readable")
        files = [str(paths[i]) for i in kept_indices]
        pixels, transform = np.stack([item.pixels for item in kept]), self.split_transform()
        dataset = ImageLabelDataset(pixels, labels[kept_indices], transform, files, Fingerprints.of(kept))
        return dataset, kept

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
