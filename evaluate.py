"""Evaluate a trained model, from its checkpoint alone, with 95% bootstrap intervals.

    python evaluate.py --ckpt_path runs/cls/version_0                       # its own data: test split, else validation
    python evaluate.py --ckpt_path runs/cls/version_0 --data_root FOLDER    # any labelled folder(s)
    python evaluate.py --ckpt_path models/classifier.safetensors --data_root DATASET --own_split
    python evaluate.py --ckpt_path runs/seg/version_0 [--data_root FOLDER ...] [--output_dir DIR]

--ckpt_path is a .ckpt file, a run folder (its checkpoints/best.ckpt) or a model file (export.py); the task,
the image size, the channels and the data settings come from it. A classifier's --data_root is a folder with class
sub-folders, or a dataset root (its Testing/, else its Training/): images that copy one the model
trained or was validated on (exact, or near by perceptual hash) are counted and left out of a second
set of results, so that a model is never scored on what it has seen; several roots (or a split drawn from
several) are also scored one by one. A segmenter's --data_root is any segmentation source or a mix
(a COCO export's test/, else valid/; image/mask folders; figshare .mat files; healthy slices), its seen
images scored apart likewise; where the images are slices of scans (NIfTI case folders), each scan is also
scored as one volume (Dice, tumour volume in mL and its error, HD95 in mm, tumour slices found). Writes
DIR/metrics.json (every number, its interval, every image's prediction) and figures, and prints a table; DIR
defaults to the run folder's evaluation/.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError
from common.labels import CLASS_NAMES, NO_TUMOR_CLASS
from common.metrics import calibration_error, iou_by_threshold, segmentation_stats, threshold_curve
from datamodules.fingerprints import Fingerprints
from datamodules.images import load_image_file, parse_source, sequence_named
from datamodules.volumes import VolumeSlice, display_spacing_mm, read_volume
from evaluation.boxes import box_report, image_boxes
from evaluation.breakdown import parts_of
from evaluation.calibration import auroc_per_class, reliability_diagram, roc_and_pr_figure
from evaluation.classification import (
    ClassPredictions,
    classification_figures,
    classification_report,
    distinct_image_accuracy,
    errors_figure,
    most_confident_errors,
)
from evaluation.reports import ClassifierReport, SegmenterReport
from evaluation.scans import ScanMasks, scan_scores, scans_report
from evaluation.segmentation import (
    boundary_distances,
    case_figure,
    segmentation_report,
    worst_and_best,
)
from inference.arguments import parse_arguments
from inference.batches import model_outputs
from lightning_modules.checkpoints import run_folder_of
from lightning_modules.classification import ClassificationModule
from lightning_modules.cli import run_with_clean_errors
from lightning_modules.trained_model import TrainedModel, resolve_device
from lightning_modules.tta import TTA_VIEWS

# The scans issue's goals (#47): a mask volume's Dice per scan and its tumour volume's relative error.
SCAN_DICE_GOAL, SCAN_VOLUME_GOAL = 0.75, 0.15


def default_output_dir(checkpoint: Path) -> Path:
    run = run_folder_of(checkpoint)
    return run / "evaluation" if run else checkpoint.with_name(f"{checkpoint.stem}-evaluation")


def folders_to_score(
    trained: TrainedModel, roots: list[str], max_phash_distance: int | None, sequences: list[str] | None = None
) -> tuple[list[Dataset], list[str | None] | None]:
    """Each folder's images as the model's datamodule prepares them for evaluation (of a multi-sequence
    slice, `sequences`, else those the model trained with), and which of them copy an image the model has
    seen (None when it records none)."""
    datamodule = trained.datamodule(sequences=sequences)
    parts = [datamodule.evaluation_images(root) for root in roots]
    datasets, loaded = [part[0] for part in parts], [image for part in parts for image in part[1]]
    fingerprints = trained.training_fingerprints
    copies = None if fingerprints is None else fingerprints.copies_in(loaded, max_phash_distance)
    return datasets, copies


def own_split(
    trained: TrainedModel, args: argparse.Namespace, **moved: str | list[str] | None
) -> tuple[Dataset, str, list[Path]]:
    """The split of the model's own data it is scored on (its official test split, else its
    validation split), rebuilt as in training from `--data_root` or the roots it recorded; with a
    description of it and every folder its images come from, in the order of their `root_of` indices."""
    datamodule = trained.datamodule(args.data_root, **moved)
    datamodule.setup("test")
    # Other roots than it trained on make another split, whose "validation" images it may have trained on.
    if trained.training_fingerprints is not None and (difference := trained.split_difference(datamodule)):
        recorded = trained.data_hparams.get("root")
        raise UserError(
            f"{trained.checkpoint}: --own_split on {', '.join(map(str, datamodule.roots))}: {difference}; pass "
            f"every data folder it trained on, moved or not (it recorded {recorded})"
        )
    split = datamodule.test_split_name
    description = f"{', '.join(map(str, datamodule.roots))}, {split} split"
    return datamodule.datasets[split], description, datamodule.source_roots


def evaluate_classifier(trained: TrainedModel, args: argparse.Namespace) -> tuple[ClassifierReport, dict]:
    if args.data_root and not args.own_split:
        max_phash_distance = trained.data_hparams.get("max_phash_distance")
        datasets, copies = folders_to_score(trained, args.data_root, max_phash_distance, args.data_sequences)
        if copies is None:
            raise UserError(
                f"{trained.checkpoint}: records no training images (trained before fingerprints were "
                "kept), so copies of them cannot be left out; retrain it"
            )
        source, roots = f"{', '.join(args.data_root)}", args.data_root
    else:
        dataset, source, roots = own_split(trained, args)
        datasets, copies = [dataset], None
    # logits and, for the familiarity score, pooled features
    run = partial(trained.module.classify, tta=args.tta or "none")
    outputs = [
        output
        for dataset in datasets
        for output in model_outputs(trained.device, dataset, args.batch_size, args.num_workers, run)
    ]
    logits, pooled = (torch.cat([output[i] for output, _ in outputs]) for i in (0, 1))
    labels = torch.cat([labels for _, labels in outputs])
    probabilities = trained.module.probabilities(logits)  # calibrated
    predictions = ClassPredictions(
        [file for dataset in datasets for file in dataset.files], labels.numpy(), probabilities.numpy()
    )

    def report(subset: ClassPredictions) -> dict:
        return classification_report(subset, CLASS_NAMES, NO_TUMOR_CLASS, args.bootstrap, args.seed)

    result = ClassifierReport(source, report(predictions), predictions.per_image(CLASS_NAMES))
    scored = np.ones(len(labels), dtype=bool)
    if copies is not None:
        scored = np.array([copy is None for copy in copies])
        result.copies_of_training_images = {kind: copies.count(kind) for kind in ("exact copy", "near copy")}
        result.unseen_images = report(predictions.subset(scored))
        for row, copy in zip(result.per_image, copies):
            row["copy_of_training_image"] = copy
    fingerprints = Fingerprints.concatenate([dataset.fingerprints for dataset in datasets])
    groups = fingerprints.duplicate_groups(trained.data_hparams.get("max_phash_distance"))
    result.distinct_images = distinct_image_accuracy(
        predictions.correct[scored], groups[scored], args.bootstrap, args.seed
    )
    # A split drawn from several roots knows each image's root; else each --data_root is a dataset of its own.
    sources = np.concatenate([index + dataset.root_of for index, dataset in enumerate(datasets)])
    sequences = [sequence_named(file) for file in predictions.files]
    for key, parts in parts_of(sources, roots, sequences).items():  # the images scored, by source and sequence
        result.parts[key] = {name: report(predictions.subset(scored & mask)) for name, mask in parts.items()
                             if (scored & mask).any()}  # fmt: skip

    # Calibration and ranking, on the images scored whose label names one class.
    scored = torch.from_numpy(scored)
    known = scored & (labels < len(CLASS_NAMES))
    uncalibrated, calibrated, truth = logits[known].softmax(dim=1), probabilities[known], labels[known]
    if known.any():
        result.calibration = {
            "temperature": float(trained.module.temperature),
            "ece_uncalibrated": calibration_error(uncalibrated, truth),
            "ece_calibrated": calibration_error(calibrated, truth),
            "auroc_one_vs_rest": auroc_per_class(calibrated, truth, CLASS_NAMES),
        }
    flagged = trained.module.is_unfamiliar(pooled)
    for row, unfamiliar in zip(result.per_image, flagged.tolist()):
        row["unlike_training_data"] = unfamiliar
    result.unlike_training_data = {
        "distance_threshold": float(trained.module.unfamiliar_threshold),
        "share_flagged": float(flagged[scored].float().mean()),
    }
    return result, classifier_figures(result, scored, source, (uncalibrated, calibrated, truth))


def classifier_figures(
    result: ClassifierReport, scored: torch.Tensor, source: str, calibration: tuple[torch.Tensor, ...]
) -> dict:
    """The confusion matrix, the most confident errors, the reliability diagram and the ROC/PR curves."""
    shown = result.scored
    headline = "accuracy" if np.isfinite(shown["accuracy"]["value"]) else "tumor_sensitivity"
    title = f"{source}: {headline.replace('_', ' ')} {shown[headline]['value']:.1%}" + (
        " (unseen images)" if result.unseen_images is not None else ""
    )
    figures = classification_figures(shown, CLASS_NAMES, title)
    per_image = result.per_image
    if errors := most_confident_errors(per_image, np.flatnonzero(scored.numpy())):
        images = [load_image_file(per_image[i]["file"], 1) for i in errors]
        figures["misclassified"] = errors_figure([per_image[i] for i in errors], images)
    if result.calibration is not None:
        uncalibrated, calibrated, truth = calibration
        reliability = {"softmax": uncalibrated, f"T = {result.calibration['temperature']:.2f}": calibrated}
        figures["reliability"] = reliability_diagram(reliability, truth)
        figures["roc_pr"] = roc_and_pr_figure(calibrated, truth, CLASS_NAMES)
    return figures


def evaluate_segmenter(trained: TrainedModel, args: argparse.Namespace) -> tuple[SegmenterReport, dict]:
    copies = None
    if args.data_root and not args.own_split:
        max_phash_distance = trained.data_hparams.get("max_phash_distance", 2)
        datasets, copies = folders_to_score(trained, args.data_root, max_phash_distance, args.data_sequences)
        source, roots = ", ".join(args.data_root), args.data_root
    else:
        dataset, source, roots = own_split(trained, args, negatives=args.data_negatives)
        datasets = [dataset]
    module, stats, curve, boxes, distances = trained.module, segmentation_stats(), threshold_curve(), [], []
    run = partial(module.predict_logits, tta=args.tta)
    files = [file for dataset in datasets for file in dataset.files]
    scan_slices: dict[str, dict[int, tuple]] = {}  # a scan's slices' (predicted, true) masks by slice index
    slice_of = [source if isinstance(source, VolumeSlice) else None for source in map(parse_source, files)]
    position = 0
    for dataset in datasets:
        for logits, masks in model_outputs(trained.device, dataset, args.batch_size, args.num_workers, run):
            curve.update(logits.sigmoid(), masks.int())
            predicted = module.tumor_masks(logits, args.min_area)
            stats.update(predicted.float(), masks.int())
            boxes += [image_boxes(p[0].numpy(), m[0].numpy()) for p, m in zip(predicted, masks)]
            distances.append(boundary_distances(predicted, masks > 0))
            for p, m, where in zip(predicted, masks, slice_of[position : position + len(masks)]):
                if where is not None:
                    scan_slices.setdefault(str(where.path), {})[where.index] = (p[0].numpy(), m[0].numpy() > 0)
            position += len(masks)
    labels = [label for dataset in datasets for label in dataset.labels]
    stats, distances = stats.compute(), np.concatenate(distances)

    def report_of(keep: np.ndarray) -> dict:
        subset = [box for box, kept in zip(boxes, keep) if kept]
        return {
            **segmentation_report(
                stats[torch.from_numpy(keep)],
                [f for f, k in zip(files, keep) if k],
                args.bootstrap,
                args.seed,
                [label for label, k in zip(labels, keep) if k],
                distances[keep],
            ),
            "boxes": box_report(subset, args.bootstrap, args.seed),
        }

    min_area = module.hparams.min_tumor_area if args.min_area is None else args.min_area
    settings = {
        "threshold": float(module.threshold),
        "min_tumor_area": min_area,
        "tumor_area_threshold": float(module.tumor_area_threshold),
        "detection_threshold": float(module.detection_threshold),
    }
    everything = {**report_of(np.ones(len(files), dtype=bool)), "iou_global_by_threshold": iou_by_threshold(curve)}
    for row, image in zip(everything["per_image"], boxes):
        row.update(true_tumors=image.truth, predicted_tumors=image.predicted, found_tumors=image.matched)
    result = SegmenterReport(source, settings, everything)
    if scan_slices:
        rows = [scan_scores(stacked_scan(scan, by_index)) for scan, by_index in scan_slices.items()]
        result.scans = scans_report(rows, SCAN_DICE_GOAL, SCAN_VOLUME_GOAL)
    # A split drawn from several roots knows each slice's root; else each --data_root is a dataset of its own.
    sources = np.concatenate([index + dataset.root_of for index, dataset in enumerate(datasets)])
    for key, parts in parts_of(sources, roots, [sequence_named(file) for file in files]).items():
        result.parts[key] = {name: without_per_image(report_of(mask)) for name, mask in parts.items()}
    if copies is not None:
        unseen = np.array([copy is None for copy in copies])
        result.copies_of_training_images = {kind: copies.count(kind) for kind in ("exact copy", "near copy")}
        for row, copy in zip(everything["per_image"], copies):
            row["copy_of_training_image"] = copy
        if unseen.any() and not unseen.all():
            result.unseen_images = without_per_image(report_of(unseen))
    figures = {}
    dataset = torch.utils.data.ConcatDataset(datasets)
    report = {**settings, **everything}
    for name, indices in worst_and_best(report).items():
        images, masks = map(torch.stack, zip(*(dataset[i] for i in indices)))
        subset = torch.utils.data.Subset(dataset, indices)
        predicted = module.tumor_masks(
            next(model_outputs(trained.device, subset, len(indices), 0, run))[0], args.min_area
        )
        figures[name] = case_figure(report, indices, images, masks, predicted)
    return result, figures


def stacked_scan(scan: str, by_index: dict[int, tuple[np.ndarray, np.ndarray]]) -> ScanMasks:
    """A scan's scored slices as one stack, first to last; slices left out (the volume's ends, no head in them)
    count as empty. The spacing is the model's grid: the scan's pixel size times its slices' size over the grid's."""
    first, last = min(by_index), max(by_index)
    shape = next(iter(by_index.values()))[0].shape
    empty = (np.zeros(shape, bool), np.zeros(shape, bool))
    predicted, truth = (np.stack(stack) for stack in zip(*(by_index.get(i, empty) for i in range(first, last + 1))))
    slice_mm, row_mm, column_mm = display_spacing_mm(scan)
    rows, columns = read_volume(Path(scan)).shape[1:]
    return ScanMasks(scan, predicted, truth, (slice_mm, row_mm * rows / shape[0], column_mm * columns / shape[1]))


def without_per_image(report: dict) -> dict:
    """A part's report: its per-image rows are in the report on all images already."""
    return {key: value for key, value in report.items() if key != "per_image"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt file or a run folder (its checkpoints/best.ckpt)")
    parser.add_argument("--data_root", nargs="+", help="what to evaluate (default: the model's own data)")
    parser.add_argument(
        "--own_split",
        action="store_true",
        help="score the model's own test (else validation) split of --data_root, the training data's root "
        "moved elsewhere; the split is recomputed from the files, as in training",
    )
    parser.add_argument(
        "--data_negatives",
        nargs="+",
        help="segmenter, with --own_split: where the healthy slices it was trained with are now",
    )
    parser.add_argument(
        "--data_sequences",
        nargs="+",
        help="of a multi-sequence (LGG) slice, the sequences to score, each a grayscale slice (t1, flair, t1c; "
        "default: those the model trained with)",
    )
    parser.add_argument("--output_dir", help="where metrics.json and the figures go (default: RUN/evaluation)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples of the 95%% intervals (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: %(default)s)")
    parser.add_argument(
        "--tta",
        choices=list(TTA_VIEWS),
        help="test-time augmentation: average over flipped views (default: a segmenter's own views, stored "
        "in it; a classifier's image as it is)",
    )
    parser.add_argument(
        "--min_area",
        type=int,
        help="segmentation: drop predicted tumours of fewer pixels, at the "
        "model's input size (default: the model's min_tumor_area)",
    )
    args = parse_arguments(parser, argv)

    trained = TrainedModel.load(args.ckpt_path, None, resolve_device(args.device))
    evaluate = evaluate_classifier if isinstance(trained.module, ClassificationModule) else evaluate_segmenter
    report, figures = evaluate(trained, args)
    checkpoint = Path(trained.checkpoint)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "checkpoint": str(checkpoint),
        "image_size": trained.image_size,
        "channels": trained.channels,
        "tta": args.tta or trained.module.hparams.get("tta", "none"),
        "bootstrap_resamples": args.bootstrap,
        "bootstrap_seed": args.seed,
        **report.to_json(),
    }
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    for name, figure in figures.items():
        figure.savefig(output_dir / f"{name}.png", bbox_inches="tight")
    print(report.text())
    print(f"wrote {output_dir}/metrics.json and {', '.join(f'{name}.png' for name in figures)}", file=sys.stderr)


if __name__ == "__main__":
    run_with_clean_errors(main)
