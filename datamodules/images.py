"""Image files in, uint8 arrays out: decoding any format the datasets hold (DICOM too), the one
resize of training and inference, and the hashes that tell copies of an image."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from common.errors import InputImageError
from datamodules.dicom import DICOM_SUFFIXES, read_dicom
from datamodules.volumes import PLANES, SLICE_MARK, VolumeSlice, sequence_of

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


# The MRI sequences a multi-sequence slice file stores as its R, G and B channels (the LGG set's order:
# pre-contrast T1, FLAIR, post-contrast T1; where a sequence was missing, FLAIR stands in its channel).
SEQUENCE_CHANNELS = {"t1": 0, "flair": 1, "t1c": 2}
SEQUENCE_MARK = "#"


@dataclass(frozen=True)
class ChannelOf:
    """One MRI sequence of a multi-sequence slice file (`SEQUENCE_CHANNELS`): read alone, it is a
    grayscale slice of that sequence."""

    path: Path
    sequence: str  # a key of SEQUENCE_CHANNELS; reports name the slice FILE#SEQUENCE

    @property
    def channel(self) -> int:
        return SEQUENCE_CHANNELS[self.sequence]

    def __str__(self) -> str:
        return f"{self.path}{SEQUENCE_MARK}{self.sequence}"


ImageSource = Path | ChannelOf | VolumeSlice  # what an image is read from


def file_of(source: ImageSource) -> Path:
    """The file an image is read from."""
    return source.path if isinstance(source, ChannelOf | VolumeSlice) else Path(source)


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


def decode_source(source: ImageSource, channels: int) -> tuple[np.ndarray | None, bytes]:
    """The image `source` holds (None if unreadable) and the bytes that identify it: the file's, or
    for one channel of a file its pixels' (so that a sequence stored twice in a file is one image)."""
    if isinstance(source, VolumeSlice):
        gray = source.pixels()[:, :, None]
    else:
        raw = file_of(source).read_bytes()
        if not isinstance(source, ChannelOf):
            return decode_image(raw, channels), raw
        image = decode_image(raw, 3)
        if image is None:
            return None, raw
        gray = np.ascontiguousarray(image[:, :, source.channel : source.channel + 1])
    # one gray channel, as a 1-channel image or stored as RGB like the gray JPEGs of the other sources
    return (gray if channels == 1 else np.repeat(gray, 3, axis=2)), gray.tobytes()


def parse_source(text: str | Path) -> ImageSource:
    """The inverse of `str(source)`: FILE#SEQUENCE names one sequence of a multi-sequence file, SCAN@INDEX one
    axial slice of a scan (SCAN@coronal:INDEX, SCAN@sagittal:INDEX of another plane)."""
    volume, _, where = str(text).rpartition(SLICE_MARK)
    plane, _, index = where.rpartition(":")
    if volume and index.isdigit() and plane in ("", *PLANES) and not Path(text).exists():
        return VolumeSlice(Path(volume), int(index), plane=plane or "axial")
    path, _, sequence = str(text).rpartition(SEQUENCE_MARK)
    if not path or sequence not in SEQUENCE_CHANNELS or Path(text).exists():
        return Path(text)
    return ChannelOf(Path(path), sequence)


def load_image_file(path: str | Path, channels: int) -> np.ndarray:
    """Decode like training does (a DICOM slice rendered as a viewer shows it), with one clear
    error per kind of bad file."""
    source = parse_source(path)
    if isinstance(source, ChannelOf | VolumeSlice):
        if isinstance(source, ChannelOf) and not source.path.is_file():  # a scan's reader names what is wrong
            raise InputImageError(f"{source.path}: file not found")
        image, _ = decode_source(source, channels)
        if image is None:
            raise InputImageError(f"{source.path}: not an image, or a corrupt one (could not decode)")
        return image
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


def _load_one(source: ImageSource, size: int, channels: int) -> LoadedImage | None:
    image, identity = decode_source(source, channels)
    return None if image is None else describe_image(image, identity, size, channels)


def describe_image(image: np.ndarray, raw: bytes, size: int, channels: int) -> LoadedImage:
    """A decoded image resized for training, with the hashes of its file (`raw`) and of its pixels."""
    gray = image[:, :, 0] if channels == 1 or image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    phash = int(str(imagehash.phash(Image.fromarray(gray))), 16)
    return LoadedImage(resize_square(image, size), image.shape[:2], hashlib.sha1(raw).hexdigest(), phash)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWxC uint8 -> size x size x C; the one resize used in training and inference."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return resized[:, :, None] if resized.ndim == 2 else resized


def load_images(paths: Sequence[ImageSource], size: int, channels: int) -> tuple[list[LoadedImage], np.ndarray]:
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


def sequence_named(file: str | Path) -> str:
    """The MRI sequence an image's name says (FILE#SEQUENCE of a multi-sequence slice, a NIfTI volume's file
    name for FILE@INDEX); '' where it says none."""
    source = parse_source(file)
    if isinstance(source, ChannelOf):
        return source.sequence
    return sequence_of(source.path) if isinstance(source, VolumeSlice) else ""
