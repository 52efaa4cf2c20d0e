"""Where segmentation images and their tumour masks come from, whatever the layout a user has:

- a Roboflow COCO export, ROOT/{train,valid,test}/ with `_annotations.coco.json` (its own split),
  or one split folder of it;
- image/mask folder pairs, ROOT/images/ + ROOT/masks/ with matching names (the common Kaggle copy of
  figshare), optionally ROOT/metadata.csv with `image,mask,label,patient_id`;
- masks beside their images as NAME_mask.png, a folder per patient; the LGG set's download (kaggle_3m,
  folders TCGA_*) stores three MRI sequences per slice as its channels, read as a grayscale slice each
  (`sequences`);
- VGG Image Annotator JSON files with their images beside them (Br35H's outlines; datamodules.via);
- NIfTI volumes with a label volume, a folder per case (BraTS), cut into axial slices (datamodules.volumes);
- the original figshare download, a folder of MATLAB v7.3 `.mat` slices (datamodules.figshare);
- healthy slices (`negatives`): a classification dataset root or class folder, whose no-tumour
  images get empty masks.

Each layout becomes a list of `MaskedImage`: the image, where its mask is, its class and patient
when known, and the source's own split when it has one."""

from __future__ import annotations

import glob
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from common.errors import DatasetError, InputImageError
from common.labels import NO_TUMOR, TUMOR
from datamodules.coco import ANNOTATION_FILE, read_coco_split
from datamodules.figshare import METADATA_FILE, figshare_label_and_patient, read_figshare_slice, read_metadata
from datamodules.images import (
    IMAGE_SUFFIXES,
    SEQUENCE_CHANNELS,
    ChannelOf,
    ImageSource,
    LoadedImage,
    decode_source,
    describe_image,
    list_images,
)
from datamodules.via import ViaShapes, find_via_files, read_via_file
from datamodules.volumes import LabelSlice, case_folders, volume_slices

COCO_SPLITS = {"train": "train", "valid": "val", "test": "test"}
NO_TUMOR_FOLDERS = ("no_tumor", "notumor", "no", "healthy", "normal")
MASK_SUFFIX = "_mask"
LGG_FOLDER_PREFIX = "TCGA_"  # a patient folder of the LGG download: TCGA_<institution>_<patient>_<date>
LGG_SEQUENCES = tuple(SEQUENCE_CHANNELS)  # each read as a slice of its own, with the slice's one mask
# The mask value of a box-labelled source's boxes (`SegmentationDataModule(boxes=...)`): pixels whose
# class a box does not tell (tumour or not); losses ignore them, and fit the box's rows and columns.
BOX_INTERIOR = 255


@dataclass
class MaskedImage:
    """One segmentation image and where its mask comes from."""

    path: ImageSource  # the image file (or one sequence of it), or the .mat file that holds image and mask
    mask: np.ndarray | Path | ViaShapes | LabelSlice | None  # a mask, its file, what draws it; None: healthy
    label: str = TUMOR  # the tumour class when known, TUMOR when not, NO_TUMOR for a healthy slice
    patient: str | None = None
    split: str | None = None  # the source's own split ("train", "val", "test"); None: the seeded split decides


@dataclass
class Source:
    """One root and what was found in it."""

    root: Path
    layout: str
    images: list[MaskedImage]


def read_mask_file(path: Path) -> np.ndarray | None:
    """A mask image as {0, 1}: any nonzero pixel of a 0/1 mask, pixels above half of a 0/255 one."""
    mask = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if mask is None:
        return None
    return (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)


def load_masked_image(item: MaskedImage, size: int, channels: int) -> tuple[LoadedImage, np.ndarray] | None:
    """The image resized for training with its hashes, and its mask at the same size; None when
    the image or its mask cannot be read, or their sizes differ."""
    if isinstance(item.path, Path) and item.path.suffix.lower() == ".mat":
        raw = item.path.read_bytes()
        try:
            figshare = read_figshare_slice(item.path)
        except InputImageError:
            return None
        image, mask = figshare.image[:, :, None], figshare.mask
        if channels == 3:
            image = np.repeat(image, 3, axis=2)
    else:
        image, raw = decode_source(item.path, channels)
        if image is None:
            return None
        if isinstance(item.mask, ViaShapes | LabelSlice):
            mask = item.mask.draw(*image.shape[:2])
        else:
            mask = read_mask_file(item.mask) if isinstance(item.mask, Path) else item.mask
        if mask is None and isinstance(item.mask, Path):
            return None
        mask = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
    if mask.shape != image.shape[:2]:
        return None
    resized = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return describe_image(image, raw, size, channels), resized


def find_layout(root: Path) -> str:
    """Which of the layouts above `root` is; a one-line error for a folder that is none of them."""
    if not root.is_dir():
        raise DatasetError(f"{root}: data root does not exist or is not a folder")
    if (root / ANNOTATION_FILE).is_file():
        return "coco split"
    if any((root / folder / ANNOTATION_FILE).is_file() for folder in COCO_SPLITS):
        return "coco export"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "image/mask folders"
    if next(root.rglob("*.mat"), None) is not None:
        return "figshare .mat"
    if find_via_files(root):
        return "VIA outlines"
    if case_folders(root):
        return "NIfTI volumes"
    lgg_folders = [root, *(p for p in root.iterdir() if p.is_dir())]
    if any(folder.name.startswith(LGG_FOLDER_PREFIX) and next(folder.glob(f"*{MASK_SUFFIX}.*"), None)
           for folder in lgg_folders):  # fmt: skip
        return "LGG sequences"
    if any(path.stem.endswith(MASK_SUFFIX) for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES):
        return "masks beside images"
    if no_tumor_folders(root):
        return "healthy slices"
    raise DatasetError(
        f"{root}: no segmentation data found (a COCO export, images/ + masks/, .mat slices, NAME{MASK_SUFFIX}.png "
        "beside NAME.png, VIA annotation JSON, NIfTI volumes, or a classification dataset's no-tumour images)"
    )


def read_source(
    root: str | Path,
    for_evaluation: bool = False,
    category_names: list[str] | None = None,
    splits: Collection[str] | None = None,
    sequences: Collection[str] = LGG_SEQUENCES,
) -> Source:
    """Every image of `root` with its mask. For evaluation, a COCO export gives its test/ (else
    valid/) split and a classification dataset its Testing/ (else Training/) no-tumour images.
    `splits` ("train", "val", "test") reads only those of a COCO export's own splits; `sequences`, those
    of a multi-sequence (LGG) slice, each a grayscale slice of its own."""
    root = Path(root)
    layout = find_layout(root)
    if layout == "coco export":
        folders = {name: split for name, split in COCO_SPLITS.items() if (root / name).is_dir()}
        if for_evaluation:
            folders = {name: None for name in (("test",) if "test" in folders else ("valid",))}
        else:
            wanted = set(COCO_SPLITS.values()) if splits is None else set(splits)
            for required in ("train", "valid"):
                if required not in folders and COCO_SPLITS[required] in wanted:
                    raise DatasetError(f"{root}: no {required}/ folder (expected ROOT/{{train,valid,test}}/)")
            folders = {name: split for name, split in folders.items() if split in wanted}
        images = [item for name, split in folders.items() for item in coco_images(root / name, split, category_names)]
    elif layout == "coco split":
        images = coco_images(root, None, category_names)
    elif layout == "image/mask folders":
        images = image_mask_pairs(root)
    elif layout == "figshare .mat":
        described = {path: figshare_label_and_patient(path) for path in sorted(root.rglob("*.mat"))}
        images = [MaskedImage(path, None, *about) for path, about in described.items() if about is not None]
        if not images:
            raise DatasetError(f"{root}: none of its .mat files is a figshare slice (struct cjdata)")
    elif layout == "masks beside images":
        images = masks_beside_images(root)
    elif layout == "LGG sequences":
        images = lgg_slices(root, sequences)
    elif layout == "VIA outlines":
        images = via_outlines(root)
    elif layout == "NIfTI volumes":
        images = nifti_slices(root)
    else:
        images = healthy_slices(root, for_evaluation)
    return Source(root, layout, images)


def coco_images(folder: Path, split: str | None, category_names: list[str] | None) -> list[MaskedImage]:
    paths, masks, report = read_coco_split(folder, category_names)
    rank_zero_info(f"Segmentation data {report.summary(folder.name)}")
    return [MaskedImage(path, mask, TUMOR if mask.any() else NO_TUMOR, None, split) for path, mask in zip(paths, masks)]


def image_mask_pairs(root: Path) -> list[MaskedImage]:
    """ROOT/images/NAME.* with ROOT/masks/NAME.*; labels and patients from ROOT/metadata.csv when present."""
    masks = {path.stem: path for path in list_images(root / "masks")}
    metadata = {}
    if (root / METADATA_FILE).is_file():
        metadata = {Path(row["image"]).stem: row for row in read_metadata(root)}
    images, unmatched = [], []
    for path in list_images(root / "images"):
        if path.stem not in masks:
            unmatched.append(path.name)
            continue
        row = metadata.get(path.stem, {})
        images.append(MaskedImage(path, masks[path.stem], row.get("label") or TUMOR, row.get("patient_id") or None))
    if unmatched:
        raise DatasetError(f"{root / 'images'}: {len(unmatched)} images without a mask in masks/, e.g. {unmatched[0]}")
    if not images:
        raise DatasetError(f"{root / 'images'}: no images")
    return images


def masks_beside_images(root: Path) -> list[MaskedImage]:
    """NAME.tif (or .png ...) with NAME_mask.tif beside it; the folder's name is the patient."""
    images = []
    # glob follows linked folders (a folder of links to patients' folders), as Path.rglob does not
    found = glob.glob(str(root / "**" / f"*{MASK_SUFFIX}.*"), recursive=True)
    for mask in sorted(Path(p) for p in found if Path(p).suffix.lower() in IMAGE_SUFFIXES):
        stem = mask.stem.removesuffix(MASK_SUFFIX)  # the LGG copy here keeps images as .jpg, masks as .png
        candidates = [mask.with_name(stem + suffix) for suffix in dict.fromkeys([mask.suffix, *IMAGE_SUFFIXES])]
        image = next((path for path in candidates if path.is_file()), None)
        if image is None:
            raise DatasetError(f"{mask}: no image beside it ({stem}{mask.suffix} or another image type)")
        images.append(MaskedImage(image, mask, TUMOR, mask.parent.name if mask.parent != root else None))
    if not images:
        raise DatasetError(f"{root}: no NAME{MASK_SUFFIX}.png beside an image in it or its folders")
    return images


def lgg_slices(root: Path, sequences: Collection[str]) -> list[MaskedImage]:
    """The LGG download's slices, each of `sequences` as a grayscale slice with the slice's mask: a
    glioma where the mask outlines one, else a tumour-free slice of a glioma patient."""
    unknown = sorted(set(sequences) - set(LGG_SEQUENCES))
    if unknown or not sequences:
        raise DatasetError(f"sequences {unknown or '[]'}: use one or more of {', '.join(LGG_SEQUENCES)}")
    images = []
    for item in masks_beside_images(root):
        mask = read_mask_file(item.mask)
        label = "glioma" if mask is not None and mask.any() else NO_TUMOR
        images += [MaskedImage(ChannelOf(item.path, name), item.mask, label, item.patient) for name in sequences]
    return images


def via_outlines(root: Path) -> list[MaskedImage]:
    """Images outlined in VIA JSON files (in `root` or a folder below): tumours of a type not given."""
    return [
        MaskedImage(image, shapes, TUMOR if shapes.shapes else NO_TUMOR)
        for path in find_via_files(root)
        for image, shapes in read_via_file(path).items()
    ]


def nifti_slices(root: Path) -> list[MaskedImage]:
    """The axial slices of a folder of cases (BraTS): gliomas where the label volume holds the tumour that
    the slice's sequence shows, tumour-free slices of the same patients elsewhere. A case without a label
    volume gives tumour-free slices only if no label volume is expected: it is an error."""
    images = []
    for image, tumour, _, case in volume_slices(root):
        if tumour is None:
            raise DatasetError(f"{image.path.parent}: no label volume (a NAME_seg.nii.gz or OT*.nii.gz beside it)")
        images.append(MaskedImage(image, tumour, "glioma" if tumour.tumour().any() else NO_TUMOR, case))
    return images


def no_tumor_folders(root: Path) -> list[Path]:
    """The no-tumour class folders of a classification dataset root (Training/ and Testing/), of a
    split folder, or `root` itself when it is one."""
    if root.name.lower() in NO_TUMOR_FOLDERS:
        return [root]
    found = []
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        found += [p for p in folder.iterdir() if p.is_dir() and p.name.lower() in NO_TUMOR_FOLDERS]
    return sorted(set(found))


def healthy_slices(root: str | Path, for_evaluation: bool = False) -> list[MaskedImage]:
    """A classification dataset's no-tumour images, each with an empty mask. For training, its
    Training/ split only (Testing/ stays unseen); for evaluation, Testing/ when it has one."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: healthy-slice folder does not exist or is not a folder")
    folders = no_tumor_folders(root)
    split_of = {folder: folder.parent.name.lower() for folder in folders}
    wanted = "testing" if for_evaluation and "testing" in split_of.values() else "training"
    if wanted in split_of.values():
        folders = [folder for folder in folders if split_of[folder] == wanted]
    else:  # a bare class folder, or class folders without split folders above them
        folders = [folder for folder in folders if split_of[folder] not in ("testing", "training")] or folders
    if not folders:
        raise DatasetError(f"{root}: no no-tumour class folder ({', '.join(NO_TUMOR_FOLDERS)}) in it")
    images = [MaskedImage(path, None, NO_TUMOR) for folder in folders for path in list_images(folder)]
    if not images:
        raise DatasetError(f"{', '.join(map(str, folders))}: no images")
    return images
