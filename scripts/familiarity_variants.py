"""Which "unlike the training data" score would flag what the classifier's own one misses: scores fitted on a
classifier's pooled validation features, each threshold at the 95th percentile of out-of-fold validation scores
(fitted on one half, scored on the other), then the share flagged of generated non-MRI inputs (scripts/ood_check.py),
of slices from other sources (--other NAME=ROOT, read as evaluate.py reads them), and of each validation source.

    python scripts/familiarity_variants.py --cls_ckpt models/classifier.safetensors \
        --other brats=$S/brats-2013-sample --folder roboflow=$S/brain-tumor-segmentation/valid

A study tool (docs/studies/tumours_not_datasets.md, "The familiarity score"): the module's own score is
`lightning_modules.familiarity`; the variants here are Gaussians per label (unknown-type tumours a group of
their own), one covariance per group, and the distance to the k-th nearest validation image (Sun et al., 2022).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from ood_check import GENERATED

from common.labels import CLASS_NAMES, LABELS
from datamodules.images import IMAGE_SUFFIXES, load_image_file
from inference.arguments import parse_arguments
from inference.batches import model_outputs
from lightning_modules.classification import ClassificationModule
from lightning_modules.familiarity import fit_class_gaussians, mahalanobis_to_nearest_class
from lightning_modules.trained_model import TrainedModel

Fit = Callable[[torch.Tensor, torch.Tensor], object]
Score = Callable[[object, torch.Tensor], torch.Tensor]


def pooled_features(trained: TrainedModel, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = list(model_outputs(trained.device, dataset, 32, 0, trained.module.forward_with_features))
    return torch.cat([output[1] for output, _ in outputs]), torch.cat([labels for _, labels in outputs])


def features_of_files(trained: TrainedModel, files: list[Path]) -> torch.Tensor:
    images = [load_image_file(file, trained.channels) for file in files]
    return torch.cat(
        [trained.module.forward_with_features(trained.batch(images[i : i + 32]))[1] for i in range(0, len(images), 32)]
    )


def gaussians(groups: int, shrinkage: float) -> tuple[Fit, Score]:
    """The module's score (one covariance shared by the groups), over `groups` labels."""
    return (
        lambda features, labels: fit_class_gaussians(features, labels, groups, shrinkage),
        lambda model, features: mahalanobis_to_nearest_class(features, *model),
    )


def gaussian_per_group(shrinkage: float) -> tuple[Fit, Score]:
    """A mean and a covariance of its own for each label; the distance to the nearest group."""

    def fit(features: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            fit_class_gaussians(features[labels == label], labels[labels == label] * 0, 1, shrinkage)
            for label in labels.unique()
        ]

    def score(model, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([mahalanobis_to_nearest_class(features, *group) for group in model], dim=1).min(dim=1).values

    return fit, score


def nearest_neighbour(k: int) -> tuple[Fit, Score]:
    """The distance of the L2-normalised features to the k-th nearest validation image's."""
    normalise = torch.nn.functional.normalize
    return (
        lambda features, labels: normalise(features, dim=1),
        lambda bank, features: torch.cdist(normalise(features, dim=1), bank).topk(k, largest=False).values[:, -1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cls_ckpt", required=True)
    parser.add_argument("--other", action="append", default=[], metavar="NAME=ROOT")
    parser.add_argument("--folder", action="append", default=[], metavar="NAME=FOLDER", help="a folder of image files")
    parser.add_argument("--count", type=int, default=50, help="generated images per kind (default: %(default)s)")
    args = parse_arguments(parser)
    trained = TrainedModel.load(args.cls_ckpt, ClassificationModule, torch.device("cpu"))
    datamodule = trained.datamodule()
    datamodule.setup("test")
    validation, roots = datamodule.datasets[datamodule.test_split_name], datamodule.roots
    features, labels = pooled_features(trained, validation)
    sources = np.array(
        [next(Path(root).name for root in roots if str(file).startswith(str(root))) for file in validation.files]
    )
    inputs: dict[str, torch.Tensor] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:  # written and read back, as a user's file would be
        for kind, generate in GENERATED.items():
            files = [Path(folder) / f"{kind.replace(' ', '_')}_{i}.png" for i in range(args.count)]
            for file in files:
                cv2.imwrite(str(file), generate(rng, 256))
            inputs[kind] = features_of_files(trained, files)
    for name, root in (other.split("=", 1) for other in args.other):
        inputs[name] = pooled_features(trained, trained.datamodule().evaluation_images(root)[0])[0]
    for name, folder in (entry.split("=", 1) for entry in args.folder):
        files = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        inputs[name] = features_of_files(trained, files)
    known = labels < len(CLASS_NAMES)
    variants = {
        "the module's (4 classes, shared covariance)": (gaussians(len(CLASS_NAMES), 0.5), known),
        "5 groups (unknown-type tumours apart)": (gaussians(len(LABELS), 0.5), None),
        "a covariance per group (5 groups)": (gaussian_per_group(0.5), None),
        **{f"k-th nearest neighbour, k={k}": (nearest_neighbour(k), None) for k in (1, 5, 20)},
    }
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    halves = (order[::2], order[1::2])
    for name, ((fit, score), fitted_on) in variants.items():
        out_of_fold = torch.empty(len(labels))
        for fit_half, score_half in (halves, halves[::-1]):
            kept = fit_half if fitted_on is None else fit_half[fitted_on[fit_half]]
            out_of_fold[score_half] = score(fit(features[kept], labels[kept]), features[score_half])
        kept = slice(None) if fitted_on is None else fitted_on
        model, threshold = fit(features[kept], labels[kept]), torch.quantile(out_of_fold, 0.95)
        flagged = {kind: float((score(model, pooled) > threshold).float().mean()) for kind, pooled in inputs.items()}
        flagged |= {
            f"val {source}": float((out_of_fold[torch.from_numpy(sources == source)] > threshold).float().mean())
            for source in sorted(set(sources))
        }
        print(f"{name}: " + ", ".join(f"{kind} {share:.0%}" for kind, share in flagged.items()), flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
