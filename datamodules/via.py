"""VGG Image Annotator (VIA 1 and 2) JSON: tumour outlines drawn as shapes, as Br35H ships them.

A VIA file is a dict keyed by filename + file size (or, in a VIA project file, the same dict under
`_via_img_metadata`); each entry names its image (`filename`, beside the JSON file) and lists its
`regions` (VIA 2: a list; VIA 1: a dict keyed "0", "1", ...), each with `shape_attributes`:
polygon / polyline (`all_points_x`, `all_points_y`), ellipse (`cx, cy, rx, ry`, `theta` in radians,
may be absent), circle (`cx, cy, r`), rect (`x, y, width, height`). Points mark no area and are skipped."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.errors import DatasetError

PROJECT_KEY = "_via_img_metadata"  # where a VIA project file (not an annotation export) keeps the same dict
SUBPIXEL_BITS = 4  # cv2 draws at 1/16 px, so coordinates need not be whole pixels
AREA_SHAPES = ("polygon", "polyline", "ellipse", "circle", "rect")


@dataclass(frozen=True)
class ViaShapes:
    """The shapes outlined on one image, drawn into a mask of any size once the image's is known."""

    file: Path  # the annotation file they come from, for error messages
    shapes: tuple[dict, ...]

    def draw(self, height: int, width: int) -> np.ndarray:
        """A {0, 1} uint8 mask of the union of the shapes."""
        mask = np.zeros((height, width), np.uint8)
        for shape in self.shapes:
            draw_shape(mask, shape, self.file)
        return mask


def fixed(value: float) -> int:
    return round(float(value) * (1 << SUBPIXEL_BITS))


def draw_shape(mask: np.ndarray, shape: dict, file: Path) -> None:
    """Fill one VIA shape into `mask` (in place); a shape missing its coordinates is a one-line error."""
    name = shape.get("name")
    try:
        if name in ("polygon", "polyline"):
            points = np.array([[fixed(x), fixed(y)] for x, y in zip(shape["all_points_x"], shape["all_points_y"])])
            if len(points) >= 3:
                cv2.fillPoly(mask, [points.astype(np.int32)], 1, cv2.LINE_8, SUBPIXEL_BITS)
        elif name in ("ellipse", "circle"):
            rx, ry = (shape["rx"], shape["ry"]) if name == "ellipse" else (shape["r"], shape["r"])
            angle = math.degrees(float(shape.get("theta") or 0))  # both rotate x towards y in image axes
            center, axes = (fixed(shape["cx"]), fixed(shape["cy"])), (fixed(rx), fixed(ry))
            cv2.ellipse(mask, center, axes, angle, 0, 360, 1, -1, cv2.LINE_8, SUBPIXEL_BITS)
        elif name == "rect":
            x, y, w, h = (float(shape[key]) for key in ("x", "y", "width", "height"))
            # cv2 fills both corners' pixels: a w x h rectangle ends one pixel before x + w
            top_left, bottom_right = (fixed(x), fixed(y)), (fixed(x + w - 1), fixed(y + h - 1))
            cv2.rectangle(mask, top_left, bottom_right, 1, -1, cv2.LINE_8, SUBPIXEL_BITS)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{file}: a {name} shape without valid coordinates ({error!r})") from None


def is_via_file(path: Path) -> bool:
    """Whether a JSON file looks like VIA annotations (cheap: the first entry only)."""
    try:
        entries = load_entries(path)
    except DatasetError:
        return False
    first = next(iter(entries.values()), None)
    return isinstance(first, dict) and "filename" in first and "regions" in first


def load_entries(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not a readable JSON file ({error})") from None
    data = data.get(PROJECT_KEY, data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not VIA annotations (expected a dict of images keyed by filename + size)")
    return data


def read_via_file(path: Path) -> dict[Path, ViaShapes]:
    """Each annotated image (beside the JSON file) with its area shapes; an image listed twice keeps
    the shapes of both entries. A missing image file is a one-line error naming both files."""
    path = Path(path)
    images: dict[Path, list[dict]] = {}
    for key, entry in load_entries(path).items():
        if not isinstance(entry, dict) or "filename" not in entry:
            raise DatasetError(f"{path}: entry {key!r} has no filename")
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        image = path.parent / entry["filename"]
        if not image.is_file():
            raise DatasetError(f"{path}: annotated image {entry['filename']} is not beside it")
        shapes = [region.get("shape_attributes", {}) for region in regions]
        images.setdefault(image, []).extend(shape for shape in shapes if shape.get("name") in AREA_SHAPES)
    if not images:
        raise DatasetError(f"{path}: no annotated images")
    return {image: ViaShapes(path, tuple(shapes)) for image, shapes in images.items()}


def find_via_files(root: Path) -> list[Path]:
    """The VIA annotation files in `root` or one folder below it (Br35H: TRAIN/, VAL/)."""
    candidates = sorted([*root.glob("*.json"), *root.glob("*/*.json")])
    return [path for path in candidates if is_via_file(path)]
