"""Write a smaller copy of a Kaggle dataset (either task's layout), for moving it to a remote GPU.

    python scripts/shrink_dataset.py SRC DST --max-side 256    # classification folders
    python scripts/shrink_dataset.py SRC DST --max-side 320    # COCO export: annotations are scaled too
    python scripts/shrink_dataset.py SRC DST --max-side 128 --grayscale   # RGB-stored slices: a third of the bytes

Every image whose longer side exceeds --max-side is scaled down (aspect kept, INTER_AREA) and
re-encoded as JPEG; COCO polygons, boxes, areas and image sizes are scaled by the same factor.
Byte-identical source images stay byte-identical (the encoder is deterministic), so the
duplicate checks still find them. Training resizes to image_size anyway: keep --max-side
at or above it. BENCHMARKS.md says which runs used such a copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from datamodules.images import IMAGE_SUFFIXES
from datamodules.segmentation import ANNOTATION_FILE


def shrink_image(source: Path, target: Path, max_side: int, quality: int, grayscale: bool = False) -> float:
    """Write the scaled JPEG; return the scale factor (1.0 when the image was small enough)."""
    image = cv2.imdecode(
        np.fromfile(source, dtype=np.uint8), cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_UNCHANGED
    )
    if image is None:  # keep unreadable files as they are: the datamodules must still see them
        target.write_bytes(source.read_bytes())
        return 1.0
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tofile(target.with_suffix(".jpg"))
    return scale


def scale_coco(annotation_file: Path, target: Path, scales: dict[str, float]) -> None:
    coco = json.loads(annotation_file.read_text())
    image_scale = {}
    for image in coco["images"]:
        scale = scales.get(image["file_name"], 1.0)
        image_scale[image["id"]] = scale
        image["file_name"] = str(Path(image["file_name"]).with_suffix(".jpg"))
        image["height"], image["width"] = round(image["height"] * scale), round(image["width"] * scale)
    for annotation in coco["annotations"]:
        scale = image_scale.get(annotation["image_id"], 1.0)
        if isinstance(annotation.get("segmentation"), list):
            annotation["segmentation"] = [[v * scale for v in polygon] for polygon in annotation["segmentation"]]
        elif annotation.get("segmentation"):
            raise SystemExit(f"{annotation_file}: RLE annotations cannot be scaled by this script")
        annotation["bbox"] = [v * scale for v in annotation.get("bbox", [])]
        annotation["area"] = annotation.get("area", 0) * scale**2
    target.write_text(json.dumps(coco))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--quality", type=int, default=92)
    parser.add_argument(
        "--grayscale", action="store_true", help="store one channel (read back as RGB, it is gray-as-RGB)"
    )
    args = parser.parse_args()
    for folder in sorted({p.parent for p in args.source.rglob("*") if p.is_file()}):
        out = args.target / folder.relative_to(args.source)
        out.mkdir(parents=True, exist_ok=True)
        scales = {
            image.name: shrink_image(image, out / image.name, args.max_side, args.quality, args.grayscale)
            for image in sorted(folder.iterdir())
            if image.suffix.lower() in IMAGE_SUFFIXES
        }
        if (folder / ANNOTATION_FILE).is_file():
            scale_coco(folder / ANNOTATION_FILE, out / ANNOTATION_FILE, scales)
    print(f"wrote {args.target}")


if __name__ == "__main__":
    main()
