"""Pieces both datamodules share: image decoding, the in-memory image cache,
duplicate detection, transforms and the DataLoader plumbing that makes every epoch's
order and augmentations a function of the seed alone."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.dicom import DICOM_SUFFIXES, read_dicom
from datamodules.errors import ConfigError, InputImageError, check_range
from datamodules.splits import union_groups

# albumentations asks PyPI for a newer release when it is imported: training must not wait on
# the network (offline and firewalled machines), so that check stays off unless a user turns it on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode_image(data: bytes, channels: int) -> np.ndarray | None:
    """Decode any image mode (gray, RGB, RGBA, palette, 16-bit) to uint8 HxWxC; None if unreadable."""
    if not data:  # cv2.imdecode raises on an empty buffer instead of returning None
        return None
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        return None
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: Path, channels: int) -> np.ndarray | None:
    """`decode_image` of a file's bytes (reading bytes rather than cv2.imread keeps non-ASCII paths working)."""
    return decode_image(Path(path).read_bytes(), channels)


def load_image_file(path: str | Path, channels: int) -> np.ndarray:
    """Decode like training does (a DICOM slice rendered as a viewer shows it), with one clear
    error per kind of bad file."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: empty file")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, channels)
    image = read_image(path, channels)
    if image is None:
        raise InputImageError(f"{path}: not an image, or a corrupt one (could not decode)")
    return image


@dataclass
class LoadedImage:
    """One decoded, resized image with the hashes used for leakage checks."""

    pixels: np.ndarray  # uint8 HxWxC at the training size
    original_size: tuple[int, int]  # (height, width) before resizing
    sha1: str
    phash: int


def _load_one(path: Path, size: int, channels: int) -> LoadedImage | None:
    raw = path.read_bytes()
    image = decode_image(raw, channels)
    return None if image is None else describe_image(image, raw, size, channels)


def describe_image(image: np.ndarray, raw: bytes, size: int, channels: int) -> LoadedImage:
    """A decoded image resized for training, with the hashes of its file (`raw`) and of its pixels."""
    gray = image[:, :, 0] if channels == 1 or image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    phash = int(str(imagehash.phash(Image.fromarray(gray))), 16)
    return LoadedImage(resize_square(image, size), image.shape[:2], hashlib.sha1(raw).hexdigest(), phash)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWxC uint8 -> size x size x C; the one resize used in training and inference."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return resized[:, :, None] if resized.ndim == 2 else resized


def load_images(paths: Sequence[Path], size: int, channels: int) -> tuple[list[LoadedImage], np.ndarray]:
    """Decode and resize every image once, in threads (OpenCV releases the GIL).

    Keeping the resized pixels in memory means each epoch costs no JPEG decoding,
    which is most of the time on a CPU machine. Unreadable files are skipped with a
    warning each; returns the images that loaded and their indices into `paths`."""
    return load_in_threads(paths, lambda path: _load_one(path, size, channels), lambda path: path)


def load_in_threads(items: Sequence, load: Callable, path_of: Callable) -> tuple[list, np.ndarray]:
    """`load(item)` for every item, in threads; items it returns None for (unreadable) are
    skipped with a warning naming `path_of(item)`. Returns what loaded and its indices into `items`."""
    with ThreadPoolExecutor() as pool:
        loaded = list(pool.map(load, items))
    for item, result in zip(items, loaded):
        if result is None:
            rank_zero_warn(f"{path_of(item)}: unreadable or corrupt image, skipped")
    kept = np.array([i for i, result in enumerate(loaded) if result is not None], dtype=np.int64)
    return [loaded[i] for i in kept], kept


def find_duplicate_groups(sha1s: Sequence[str], phashes: Sequence[int], max_phash_distance: int | None) -> np.ndarray:
    """Group ids such that byte-identical images, and images whose perceptual hashes
    differ in at most `max_phash_distance` bits (None: exact copies only), share a group."""

    def pairs() -> Iterator[tuple[int, int]]:
        first_with_hash: dict[str, int] = {}
        for i, digest in enumerate(sha1s):
            yield i, first_with_hash.setdefault(digest, i)
        if max_phash_distance is not None and len(sha1s):
            hashes = np.array(phashes, dtype=np.uint64)
            for i in range(len(hashes) - 1):
                distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
                for j in np.nonzero(distances <= max_phash_distance)[0]:
                    yield i, i + 1 + int(j)

    return union_groups(len(sha1s), pairs())


@dataclass
class Fingerprints:
    """Compact identities of a set of images, a few bytes each: the SHA-1 of the file and its
    64-bit perceptual hash. A checkpoint keeps those of every image its model trained or was
    validated on, so that any later test set can be checked for copies of them."""

    sha1: np.ndarray  # (N, 20) uint8
    phash: np.ndarray  # (N,) uint64

    @classmethod
    def of(cls, images: Sequence[LoadedImage]) -> Fingerprints:
        sha1 = np.array([np.frombuffer(bytes.fromhex(image.sha1), np.uint8) for image in images], np.uint8)
        return cls(sha1.reshape(len(images), 20), np.array([image.phash for image in images], np.uint64))

    def to_state(self) -> dict[str, torch.Tensor]:
        """As tensors, which `torch.load(weights_only=True)` reads back."""
        return {"sha1": torch.from_numpy(self.sha1.copy()), "phash": torch.from_numpy(self.phash.view(np.int64).copy())}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Fingerprints:
        return cls(state["sha1"].numpy().astype(np.uint8), state["phash"].numpy().view(np.uint64))

    @classmethod
    def union(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        """Every file of `parts` (at least one), each once (by SHA-1), in the order first seen."""
        sha1, phash = np.concatenate([part.sha1 for part in parts]), np.concatenate([part.phash for part in parts])
        _, first = np.unique(sha1, axis=0, return_index=True)
        kept = np.sort(first)
        return cls(sha1[kept], phash[kept])

    def __len__(self) -> int:
        return len(self.phash)

    def file_hashes(self) -> set[bytes]:
        """The SHA-1 digests, as a set: identical files count once."""
        return {row.tobytes() for row in self.sha1}

    def same_images(self, other: Fingerprints) -> bool:
        """Whether both hold exactly the same files (by SHA-1)."""
        return self.file_hashes() == other.file_hashes()

    def shares_images_with(self, other: Fingerprints) -> bool:
        """Whether any file is in both (by SHA-1)."""
        return not self.file_hashes().isdisjoint(other.file_hashes())

    def copies_in(self, images: Sequence[LoadedImage], max_phash_distance: int | None) -> list[str | None]:
        """For each image: "exact copy" or "near copy" of one of these, or None."""
        known = self.file_hashes()
        found: list[str | None] = []
        for image in images:
            if bytes.fromhex(image.sha1) in known:
                found.append("exact copy")
            elif (
                max_phash_distance is not None
                and len(self)
                and (np.bitwise_count(self.phash ^ np.uint64(image.phash)).min() <= max_phash_distance)
            ):
                found.append("near copy")
            else:
                found.append(None)
        return found


def imagenet_normalization(channels: int) -> A.Normalize:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return A.Normalize(mean=mean, std=std)


def build_transform(augmentations: Sequence[A.BasicTransform], channels: int) -> A.Compose:
    """Augmentations (train only) followed by the normalization every split shares."""
    return A.Compose([*augmentations, imagenet_normalization(channels), ToTensorV2()])


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


AUGMENTATIONS: dict[str, Callable[[], list[A.BasicTransform]]] = {
    "light": light_augmentations,
    "strong": strong_augmentations,
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


def augmentation_seed(seed: int, epoch: int, *item: int) -> int:
    """The seed of one item's augmentation in one epoch (an item: an index, or an index and its draw)."""
    return int(np.random.SeedSequence([seed, epoch, *item]).generate_state(1)[0])


class SeededSampler(DistributedSampler):
    """Shuffles by (seed, epoch) as `DistributedSampler` does, and hands each index its own
    augmentation seed as an `(index, seed)` item.

    An epoch's order and augmentations are then a function of the seed and the epoch alone:
    the same with any number of DataLoader workers, persistent or not, and the same after
    a resume as in an uninterrupted run. Lightning calls `set_epoch` every epoch; being a
    DistributedSampler, it is used as it is under DDP, each process taking its own share.

    `weights` (one per item, any positive scale): an epoch is instead as many draws with
    replacement, each item drawn in proportion to its weight; an item drawn twice gets two
    augmentations."""

    def __init__(self, dataset: Sized, *, weights: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        if weights is not None and len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} sampling weights for {len(dataset)} items")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.weights is None:
            for index in super().__iter__():
                yield index, augmentation_seed(self.seed, self.epoch, index)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator).tolist()
        for draw in range(self.rank, self.total_size, self.num_replicas):
            yield draws[draw], augmentation_seed(self.seed, self.epoch, draws[draw], draw)


class CachedDataset(Dataset):
    """Cached uint8 arrays and a transform, and the file each item came from. An item is an
    index, or an `(index, seed)` pair from `SeededSampler`, which reseeds the transform first
    (albumentations keeps its own random state, independent of torch's and numpy's global seeds)."""

    def __init__(self, transform: A.Compose, files: Sequence[str]) -> None:
        self.transform = transform
        self.files = list(files)

    def __getitem__(self, item: int | tuple[int, int]):
        if isinstance(item, tuple):
            item, seed = item
            self.transform.set_random_seed(seed)
        return self.get(item)

    def get(self, index: int):
        raise NotImplementedError


class CachedDataModule(L.LightningDataModule):
    """DataLoader plumbing shared by the task datamodules, which fill `self.datasets`
    ("train", "val" and, when the data has one, "test") in `setup`.

    Subclasses take their own arguments plus **kwargs passed on to this __init__.

    Args:
        batch_size: images per batch (per device).
        seed: seeds the order of the training images and their augmentations in every epoch
            (and the classification validation split); the model's own randomness follows
            `seed_everything`.
        num_workers: DataLoader workers; None picks min(8, CPU count).
        pin_memory: None pins when CUDA is available.
        persistent_workers: keep workers alive between epochs.
    """

    def __init__(
        self,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        check_range("batch_size", batch_size, 1)
        check_range("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, Dataset] = {}
        self.training_fingerprints: Fingerprints | None = None  # of train + val, once set up
        self._next_epoch = 0  # the epoch a resumed run goes on with (load_state_dict)

    def state_dict(self) -> dict:
        state = {}
        if self.trainer:  # Lightning restores this before it builds the first loader; its own loop state comes later
            state["next_epoch"] = self.trainer.fit_loop.epoch_progress.current.processed
        if self.training_fingerprints is not None:  # what evaluate.py checks other data against
            state["training_fingerprints"] = self.training_fingerprints.to_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._next_epoch = state_dict.get("next_epoch", 0)

    @property
    def test_split_name(self) -> str:
        """The split evaluate.py reports on: the official test split when the data has one."""
        return "test" if "test" in self.datasets else "val"

    def sampling_weights(self, split: str) -> list[float] | None:
        """How often each image of a shuffled split is drawn (`SeededSampler`); None: each once an epoch."""
        return None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        dataset, hp = self.datasets[split], self.hparams
        sampler = None
        if shuffle:
            trainer = self.trainer  # None when the datamodule is used on its own
            sampler = SeededSampler(
                dataset,
                weights=self.sampling_weights(split),
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
                seed=hp.seed,
            )
            if trainer:
                # Lightning sets the epoch only after creating the first iterator, whose workers start
                # fetching at once, and on resume it creates it before restoring its loops: without
                # this, a resumed run's first epoch would get epoch 0's order and augmentations.
                sampler.set_epoch(max(trainer.fit_loop.epoch_progress.current.processed, self._next_epoch))
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=shuffle and len(dataset) > hp.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=hp.persistent_workers and self.num_workers > 0,
            # Its own generator: creating an iterator then draws nothing from torch's global
            # random state, which dropout and mixup use and a resume restores.
            generator=torch.Generator().manual_seed(hp.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split_name, shuffle=False)
