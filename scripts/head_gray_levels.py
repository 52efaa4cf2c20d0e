"""Where each source's slices put the head in the 8-bit range: the median gray level inside the head
(datamodules.contrast.head_mask), per slice, summarised per source. The scans' window (datamodules.volumes.HEAD_GRAY)
puts a volume's head where the training slices have theirs.

    python scripts/head_gray_levels.py figshare=$S/brain-tumor-figshare sartaj=$S/brain-tumor-classification-mri \
        masoud=$S/brain-tumor-mri-dataset lgg=$S/lgg-mri-segmentation/kaggle_3m br35h=$S/br35h/Br35H-Mask-RCNN
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from datamodules.contrast import head_mask
from datamodules.images import IMAGE_SUFFIXES

LGG_SEQUENCES = {"T1": 2, "FLAIR": 1, "T1c": 0}  # channels of an LGG slice as OpenCV reads it (BGR)


def head_median(gray: np.ndarray) -> float | None:
    """The median gray level inside the head; None when the slice holds almost no head (a volume's end)."""
    head = head_mask(gray)
    return float(np.median(gray[head])) if head.mean() >= 0.1 else None


def slice_images(root: Path) -> list[Path]:
    """The slices under `root`, not their masks (a `masks/` folder or a `_mask` file)."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and "mask" not in str(path.relative_to(root)).lower()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="NAME=ROOT")
    parser.add_argument("--per_source", type=int, default=400, help="slices drawn at random from each source")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| source | slices | head median gray: median [25th, 75th percentile] |\n|---|---|---|")
    for source in args.sources:
        name, root = source.split("=", 1)
        paths = slice_images(Path(root))
        picked = [paths[i] for i in rng.choice(len(paths), min(args.per_source, len(paths)), replace=False)]
        images = [cv2.imread(str(path)) for path in picked]
        views = {name: [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image in images]}
        if name.lower() == "lgg":  # three sequences in one slice: each on its own
            views = {
                f"{name} {seq}": [image[..., channel] for image in images] for seq, channel in LGG_SEQUENCES.items()
            }
        for view, grays in views.items():
            medians = [m for m in map(head_median, grays) if m is not None]
            q25, q50, q75 = np.percentile(medians, (25, 50, 75))
            print(f"| {view} | {len(medians)} | {q50:.0f} [{q25:.0f}, {q75:.0f}] |")


if __name__ == "__main__":
    main()
