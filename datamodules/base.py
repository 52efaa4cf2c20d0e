"""What both datamodules build on: cached datasets, and the DataLoader plumbing that makes every
epoch's order and augmentations a function of the seed alone."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence, Sized

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import check_range
from datamodules.fingerprints import Fingerprints
from datamodules.transforms import build_transform


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
        self._resume_at = (-1, 0)  # (epoch, items of it already trained): see resume

    def resume(self, epoch: int, items_done: int) -> None:
        """Start epoch `epoch`, when it comes, after its first `items_done` items (a mid-epoch resume)."""
        self._resume_at = (epoch, items_done)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, items_done = self._resume_at
        return itertools.islice(self._items(), items_done if epoch == self.epoch else 0, None)

    def _items(self) -> Iterator[tuple[int, int]]:
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
        head_gray: every slice's gray levels scaled so that its head's median is this (datamodules.contrast.HeadGray),
            in training and wherever the trained model runs; None: slices as they are.
    """

    def __init__(
        self,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        head_gray: int | None = None,
    ) -> None:
        super().__init__()
        check_range("batch_size", batch_size, 1)
        check_range("head_gray", head_gray, 1, 254)
        check_range("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, Dataset] = {}
        self.training_fingerprints: Fingerprints | None = None  # of train + val, once set up
        self._next_epoch = 0  # the epoch a resumed run goes on with (load_state_dict)
        self._train_sampler: SeededSampler | None = None  # of the loader Lightning trains with
        self._resume_at = (0, 0)  # the epoch a resumed run's checkpoint was written in, and its batches trained

    def split_transform(self, augmentations: Sequence[A.BasicTransform] = ()) -> A.Compose:
        """The pipeline of a split: `augmentations` for training, none for the others."""
        return build_transform(augmentations, self.channels, self.hparams.head_gray)

    def state_dict(self) -> dict:
        state = {}
        if self.trainer:  # Lightning restores this before it builds the first loader; its own loop state comes later
            state["next_epoch"] = self.trainer.fit_loop.epoch_progress.current.processed
            if self._train_sampler is not None:
                # Where the epoch stood, so that a checkpoint written mid-epoch (Ctrl-C, an exception) resumes
                # with the epoch's next batch, not its first: Lightning's count of the batches trained (the
                # loader's own runs ahead by what is prefetched). Lightning would keep a stateful loader's
                # state, but does not restore it when configure_optimizers asks for estimated_stepping_batches
                # (Lightning issue 20550), and warns of an unreliable resume all the same.
                batches_trained = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
                state["resume_at"] = (self._train_sampler.epoch, batches_trained)
        if self.training_fingerprints is not None:  # what evaluate.py checks other data against
            state["training_fingerprints"] = self.training_fingerprints.to_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._next_epoch = state_dict.get("next_epoch", 0)
        self._resume_at = tuple(state_dict.get("resume_at", (0, 0)))

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
                epoch, batches_trained = self._resume_at
                sampler.resume(epoch, batches_trained * hp.batch_size)
                self._train_sampler = sampler
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
