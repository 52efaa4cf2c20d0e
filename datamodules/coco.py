"""COCO annotation files, as the Roboflow export of "Brain Tumor Image DataSet: Semantic
Segmentation" writes them: every tumour annotation of an image, polygon or RLE, rasterised into
one binary mask at the image's own size."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from pycocotools.coco import COCO

from common.errors import DatasetError
from datamodules.images import list_images

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
