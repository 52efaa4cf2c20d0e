"""How often a classifier calls inputs "unlike the training data": brain MRI slices it was not
trained on against inputs that are clearly not brain MRI slices, generated here (no downloads).

    python scripts/ood_check.py --cls_ckpt runs/cls/version_0 [--mri FOLDER ...] [--count 50]

--mri folders hold in-distribution images (e.g. the segmentation dataset's valid/: brain MRI
slices from another source); the generated kinds are uniform noise, blank (black, white, gray),
a photo-like scene (smooth colour gradients with shapes) and a chest-X-ray-like image (dark lung
fields, ribs, a bright spine). Prints the share flagged per kind; the validation share is 5% by
construction of the threshold.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from datamodules.images import IMAGE_SUFFIXES
from inference.arguments import parse_arguments
from inference.predictor import TumorPredictor


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def blank(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.full((size, size, 3), int(rng.choice([0, 128, 255])), np.uint8)


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colourful scene: a sky-to-ground gradient with a few filled shapes."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8)
    for _ in range(5):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(
            image, centre, int(rng.integers(size // 16, size // 4)), [int(c) for c in rng.integers(0, 256, 3)], -1
        )
    return image


def chest_xray_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A frontal chest radiograph's layout: bright body, two dark lungs, ribs, a spine."""
    image = np.full((size, size), 170, np.uint8)
    for side in (-1, 1):
        centre = (size // 2 + side * size // 5, size // 2)
        cv2.ellipse(image, centre, (size // 7, size // 3), 0, 0, 360, 50, -1)
        for rib in range(6):
            y = size // 4 + rib * size // 12
            cv2.ellipse(
                image, (size // 2, y), (size // 3, size // 20), 0, 180 + 90 * (side > 0), 270 + 90 * (side > 0), 200, 2
            )
    cv2.rectangle(image, (size // 2 - size // 30, 0), (size // 2 + size // 30, size), 230, -1)
    image = cv2.GaussianBlur(image, (0, 0), size / 150) + rng.normal(0, 6, image.shape)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


GENERATED = {"noise": noise, "blank": blank, "photo-like": photo_like, "chest X-ray-like": chest_xray_like}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cls_ckpt", required=True, help="classifier checkpoint or run folder")
    parser.add_argument("--mri", nargs="*", default=[], help="folders of in-distribution MRI slices")
    parser.add_argument("--count", type=int, default=50, help="generated images per kind (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256)
    args = parse_arguments(parser)
    predictor = TumorPredictor(args.cls_ckpt)
    rng = np.random.default_rng(0)
    kinds: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, generate in GENERATED.items():
            kinds[kind] = []
            for i in range(args.count):
                path = Path(folder) / f"{kind.replace(' ', '_')}_{i}.png"
                cv2.imwrite(str(path), generate(rng, args.size))
                kinds[kind].append(path)
        for mri in args.mri:
            kinds[f"MRI: {mri}"] = sorted(p for p in Path(mri).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        print(f"{'inputs':<60}{'images':>8}{'flagged':>10}")
        for kind, paths in kinds.items():
            flagged = [p.unlike_training_data for p in predictor.predict_files(paths, batch_size=32, gradcam=False)]
            print(f"{kind:<60}{len(flagged):>8}{np.mean(flagged):>10.1%}")


if __name__ == "__main__":
    main()
