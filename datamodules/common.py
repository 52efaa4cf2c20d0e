"""Pieces both datamodules share: image decoding, the in-memory image cache,
duplicate detection, transforms, DataLoader plumbing and the error type that the CLI
turns into one line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import imagehash
import lightning as L
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """Bad input data; train.py and evaluate.py print it as one line and exit."""


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, channels: int) -> np.ndarray | None:
    """Decode any image mode (gray, RGB, RGBA, palette, 16-bit) to uint8 HxWxC; None if unreadable.

    Decoding from bytes rather than cv2.imread keeps non-ASCII paths working."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
    if image is None:
        return None
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class LoadedImage:
    """One decoded, resized image with the hashes used for leakage checks."""

    pixels: np.ndarray  # uint8 HxWxC at the training size
    original_size: tuple[int, int]  # (height, width) before resizing
    sha1: str
    phash: int


def _load_one(path: Path, size: int, channels: int) -> LoadedImage | None:
    raw = path.read_bytes()
    image = read_image(path, channels)
    if image is None:
        return None
    gray = image[:, :, 0] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    phash = int(str(imagehash.phash(Image.fromarray(gray))), 16)
    return LoadedImage(resize_square(image, size), image.shape[:2], hashlib.sha1(raw).hexdigest(), phash)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWxC uint8 -> size x size x C; the one resize used in training and inference."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return resized[:, :, None] if resized.ndim == 2 else resized


def load_images(paths: Sequence[Path], size: int, channels: int) -> list[LoadedImage | None]:
    """Decode and resize every image once, in threads (OpenCV releases the GIL).

    Keeping the resized pixels in memory means each epoch costs no JPEG decoding,
    which is most of the time on a CPU machine. Unreadable files come back as None."""
    with ThreadPoolExecutor() as pool:
        return list(pool.map(lambda p: _load_one(p, size, channels), paths))


def find_duplicate_groups(
    sha1s: Sequence[str], phashes: Sequence[int], max_phash_distance: int | None
) -> np.ndarray:
    """Group ids such that byte-identical images, and images whose perceptual hashes
    differ in at most `max_phash_distance` bits (None: exact copies only), share a group."""
    n = len(sha1s)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_with_hash: dict[str, int] = {}
    for i, digest in enumerate(sha1s):
        union(i, first_with_hash.setdefault(digest, i))
    if max_phash_distance is not None and n:
        hashes = np.array(phashes, dtype=np.uint64)
        for i in range(n - 1):
            distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
            for j in np.nonzero(distances <= max_phash_distance)[0]:
                union(i, i + 1 + int(j))
    return np.array([find(i) for i in range(n)])


def imagenet_normalization(channels: int) -> A.Normalize:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return A.Normalize(mean=mean, std=std)


def build_transform(augmentations: Sequence[A.BasicTransform], channels: int) -> A.Compose:
    """Augmentations (train only) followed by the normalization every split shares."""
    return A.Compose([*augmentations, imagenet_normalization(channels), ToTensorV2()])


def default_geometric_augmentations() -> list[A.BasicTransform]:
    """Flips and small affine jitter: MRI slices vary in position and orientation across scanners."""
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]



class CachedDataModule(L.LightningDataModule):
    """DataLoader plumbing shared by the task datamodules, which fill `self.datasets`
    ("train", "val" and, when the data has one, "test") in `setup`.

    Subclasses take their own arguments plus **kwargs passed on to this __init__.

    Args:
        batch_size: images per batch (per device).
        num_workers: DataLoader workers; None picks min(8, CPU count).
        pin_memory: None pins when CUDA is available.
        persistent_workers: keep workers alive between epochs.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, Dataset] = {}

    @property
    def test_split_name(self) -> str:
        """The split evaluate.py reports on: the official test split when the data has one."""
        return "test" if "test" in self.datasets else "val"

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[split]) > self.hparams.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.hparams.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split_name, shuffle=False)
