"""Write a smaller copy of a Kaggle dataset (either task's layout), for moving it to a remote GPU.

    python scripts/shrink_dataset.py SRC DST --max_side 256    # classification folders
    python scripts/shrink_dataset.py SRC DST --max_side 320    # COCO export: annotations are scaled too
    python scripts/shrink_dataset.py SRC DST --max_side 128 --grayscale   # RGB-stored slices: a third of the bytes

Every image whose longer side exceeds --max_side is scaled down (aspect kept, INTER_AREA) and
re-encoded as JPEG; COCO polygons, boxes, areas and image sizes are scaled by the same factor.
Masks (ROOT/masks/*, NAME_mask.*) are scaled by nearest neighbour and kept lossless as PNG, and so
are the images beside NAME_mask files (that layout pairs names with one suffix); metadata.csv's
paths follow the new names; other files are copied, and so are images already small enough and in
the format they would be written in (without --grayscale).
Byte-identical source images stay byte-identical (the encoder is deterministic), so the
duplicate checks still find them. Training resizes to image_size anyway: keep --max_side
at or above it. BENCHMARKS.md says which runs used such a copy.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from datamodules.coco import ANNOTATION_FILE
from datamodules.figshare import METADATA_FILE
from datamodules.images import IMAGE_SUFFIXES
from datamodules.mask_sources import MASK_SUFFIX
from inference.arguments import parse_arguments


def shrink_image(
    source: Path,
    target: Path,
    max_side: int,
    quality: int,
    grayscale: bool = False,
    mask: bool = False,
    suffix: str = ".jpg",
) -> tuple[float, Path]:
    """Write the scaled image as `suffix` (JPEG at `quality`, or lossless PNG); a mask by nearest neighbour,
    in one channel. Return the scale factor (1.0 when the image was small enough) and the file written."""
    flag = cv2.IMREAD_GRAYSCALE if grayscale or mask else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.fromfile(source, dtype=np.uint8), flag)
    if image is None:  # keep unreadable files as they are: the datamodules must still see them
        target.write_bytes(source.read_bytes())
        return 1.0, target
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale == 1.0 and source.suffix.lower() == suffix and not grayscale:  # as it is: no second JPEG loss
        shutil.copyfile(source, target.with_suffix(suffix))
        return scale, target.with_suffix(suffix)
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_AREA)
    target = target.with_suffix(suffix)
    cv2.imencode(suffix, image, [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix == ".jpg" else [])[1].tofile(target)
    return scale, target


def is_mask(path: Path) -> bool:
    return path.parent.name == "masks" or path.stem.endswith(MASK_SUFFIX)


def rename_in_metadata(metadata: Path, target: Path, renamed: dict[Path, Path]) -> None:
    """Copy metadata.csv to `target` with its image and mask paths (relative to its folder) as `renamed`
    (source file -> file written) wrote them."""

    def as_written(value: str) -> str:
        written = renamed.get(metadata.parent / value)
        return value if written is None else written.relative_to(target.parent).as_posix()

    with metadata.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = [{key: as_written(value) for key, value in row.items()} for row in reader]
    with target.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(rows)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--max_side", type=int, default=256)
    parser.add_argument("--quality", type=int, default=92)
    parser.add_argument(
        "--grayscale", action="store_true", help="store one channel (read back as RGB, it is gray-as-RGB)"
    )
    args = parse_arguments(parser, argv)
    renamed = {}  # source file -> file written
    for folder in sorted({p.parent for p in args.source.rglob("*") if p.is_file()}):
        out = args.target / folder.relative_to(args.source)
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        pairs_by_name = any(p.stem.endswith(MASK_SUFFIX) for p in files)
        scales = {}
        for path in files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                mask = is_mask(path)
                scales[path.name], renamed[path] = shrink_image(
                    path,
                    out / path.name,
                    args.max_side,
                    args.quality,
                    args.grayscale,
                    mask,
                    ".png" if pairs_by_name or mask else ".jpg",
                )
            elif path.name not in (ANNOTATION_FILE, METADATA_FILE):
                shutil.copyfile(path, out / path.name)
        if (folder / ANNOTATION_FILE).is_file():
            scale_coco(folder / ANNOTATION_FILE, out / ANNOTATION_FILE, scales)
    for metadata in args.source.rglob(METADATA_FILE):  # after every folder: it names files of folders below it
        rename_in_metadata(metadata, args.target / metadata.relative_to(args.source), renamed)
    print(f"wrote {args.target}")


if __name__ == "__main__":
    main()
