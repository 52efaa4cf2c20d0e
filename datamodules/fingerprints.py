"""Which images are copies of which: duplicate groups within a dataset, and the fingerprints a
checkpoint keeps of every image its model has seen, to find copies of them in any later data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.images import LoadedImage
from datamodules.splits import union_groups


def find_duplicate_groups(
    sha1s: Sequence[str],
    phashes: Sequence[int],
    max_phash_distance: int | None,
    patients: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Group ids such that byte-identical images, and images whose perceptual hashes
    differ in at most `max_phash_distance` bits (None: exact copies only), share a group.

    `patients` (None where unknown): two slices of different known patients are never near copies.
    Small sections at a volume's ends look alike across patients, and chaining them (a~b~c...) merged
    most of the LGG patients into one group, which a split then had to put on one side whole."""

    def pairs() -> Iterator[tuple[int, int]]:
        first_with_hash: dict[str, int] = {}
        for i, digest in enumerate(sha1s):
            yield i, first_with_hash.setdefault(digest, i)
        if max_phash_distance is not None and len(sha1s):
            hashes = np.array(phashes, dtype=np.uint64)
            codes: dict[str, int] = {}
            patient_of = np.array(
                [codes.setdefault(p, len(codes)) if p else -1 for p in patients or [None] * len(sha1s)]
            )
            for i in range(len(hashes) - 1):
                near = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= max_phash_distance
                if patient_of[i] >= 0:
                    near &= (patient_of[i + 1 :] < 0) | (patient_of[i + 1 :] == patient_of[i])
                for j in np.nonzero(near)[0]:
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

    @classmethod
    def concatenate(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        """Every image of `parts`, in order, copies included."""
        return cls(np.concatenate([part.sha1 for part in parts]), np.concatenate([part.phash for part in parts]))

    def __len__(self) -> int:
        return len(self.phash)

    def duplicate_groups(self, max_phash_distance: int | None) -> np.ndarray:
        """One group id per image, shared by its copies among these (as `find_duplicate_groups`)."""
        return find_duplicate_groups([row.tobytes() for row in self.sha1], self.phash, max_phash_distance)

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
