"""Classification results: accuracy, per-class precision/recall/F1 and the tumor-vs-no-tumor
operating point, each with a bootstrap interval, from per-image class probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from common.labels import LABELS, allowed_classes
from common.visualization import confusion_matrix_figure
from evaluation.bootstrap import bootstrap_intervals, interval_text, with_interval


@dataclass
class ClassPredictions:
    """What a classifier said about each image of an evaluated set."""

    files: list[str]
    labels: np.ndarray  # (N,) label indices (common.labels.LABELS: a class, or a tumour of unknown type)
    probabilities: np.ndarray  # (N, C)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        """Whether each prediction is one its label allows (any tumour type, for a tumour of unknown type)."""
        return allowed_classes()[self.labels, self.predicted]

    def subset(self, keep: np.ndarray) -> ClassPredictions:
        return ClassPredictions([f for f, k in zip(self.files, keep) if k], self.labels[keep], self.probabilities[keep])

    def per_image(self, class_names: Sequence[str]) -> list[dict]:
        """JSON rows: file, truth, prediction and every class probability."""
        label_names = [*class_names, *LABELS[len(class_names) :]]
        return [
            {
                "file": file,
                "label": label_names[label],
                "predicted": class_names[int(np.argmax(row))],
                "correct": bool(correct),
                "probabilities": {name: round(float(p), 6) for name, p in zip(class_names, row)},
            }
            for file, label, row, correct in zip(self.files, self.labels, self.probabilities, self.correct)
        ]


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int, num_labels: int | None = None
) -> np.ndarray:
    """Counts, rows true labels (`num_labels`, the classes by default, then labels that allow several
    classes), columns predicted classes."""
    rows = num_classes if num_labels is None else num_labels
    return np.bincount(labels * num_classes + predicted, minlength=rows * num_classes).reshape(rows, num_classes)


def classification_metrics(confmat: np.ndarray, negative_class: int) -> dict[str, float | np.ndarray]:
    """Point values from a confusion matrix (rows: labels, the classes first; columns: classes). Tumor
    sensitivity counts every class but `negative_class` as "tumor": a glioma called meningioma is still
    detected, which is what a screening reader cares about; rows of a tumour of unknown type count there
    only. Undefined values (no support) are NaN."""
    num_classes = confmat.shape[1]
    known = confmat[:num_classes]  # the rows whose label names one class
    with np.errstate(invalid="ignore", divide="ignore"):
        support, predicted = known.sum(axis=1), known.sum(axis=0)
        recall = np.diag(known) / support
        precision = np.diag(known) / predicted
        tumor_rows = [r for r in range(len(confmat)) if r != negative_class]
        tumor_columns = [c for c in range(num_classes) if c != negative_class]
        return {
            "accuracy": np.trace(known) / known.sum(),
            "accuracy_macro": np.nanmean(recall) if np.isfinite(recall).any() else np.nan,
            "recall": recall,
            "precision": precision,
            "f1": 2 * precision * recall / (precision + recall),
            "tumor_sensitivity": confmat[np.ix_(tumor_rows, tumor_columns)].sum() / confmat[tumor_rows].sum(),
            "tumor_specificity": confmat[negative_class, negative_class] / support[negative_class],
        }


def classification_report(
    predictions: ClassPredictions, class_names: Sequence[str], negative_class: int, resamples: int = 1000, seed: int = 0
) -> dict:
    """JSON-ready numbers, every accuracy and recall with its 95% bootstrap interval."""
    num_classes = len(class_names)
    labels, predicted = predictions.labels, predictions.predicted
    num_labels = max(num_classes, int(labels.max()) + 1) if len(labels) else num_classes
    confmat = confusion_matrix(labels, predicted, num_classes, num_labels)
    point = classification_metrics(confmat, negative_class)

    def metric(name: str, index: int | None = None):
        def statistic(indices: np.ndarray) -> float:
            values = classification_metrics(
                confusion_matrix(labels[indices], predicted[indices], num_classes, num_labels), negative_class
            )[name]
            return values if index is None else values[index]

        return statistic

    scalar_names = ("accuracy", "accuracy_macro", "tumor_sensitivity", "tumor_specificity")
    statistics = {name: metric(name) for name in scalar_names}
    for c, class_name in enumerate(class_names):
        statistics[f"recall/{class_name}"] = metric("recall", c)
        statistics[f"precision/{class_name}"] = metric("precision", c)
    intervals = bootstrap_intervals(statistics, len(labels), resamples, seed) if len(labels) else {}
    nan = (np.nan, np.nan)
    return {
        "num_images": int(len(labels)),
        **{name: with_interval(point[name], intervals.get(name, nan)) for name in scalar_names},
        "per_class": {
            name: {
                "precision": with_interval(point["precision"][c], intervals.get(f"precision/{name}", nan)),
                "recall": with_interval(point["recall"][c], intervals.get(f"recall/{name}", nan)),
                "f1": float(point["f1"][c]),
                "support": int(confmat[c].sum()),
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": confmat.tolist(),
    }


def format_classification_report(report: dict, title: str) -> str:
    lines = [title, f"{'class':<12}{'precision':>24}{'recall':>24}{'f1':>8}{'support':>9}"]
    for name, row in report["per_class"].items():
        f1 = f"{row['f1']:.4f}" if np.isfinite(row["f1"]) else "n/a"
        lines.append(
            f"{name:<12}{interval_text(row['precision']):>24}{interval_text(row['recall']):>24}"
            f"{f1:>8}{row['support']:>9}"
        )
    lines += [
        f"accuracy {interval_text(report['accuracy'])}, macro {interval_text(report['accuracy_macro'])} "
        f"on {report['num_images']} images (95% bootstrap intervals)",
        f"tumor vs no tumor: sensitivity {interval_text(report['tumor_sensitivity'])}, "
        f"specificity {interval_text(report['tumor_specificity'])}",
    ]
    return "\n".join(lines)


def distinct_image_accuracy(right: np.ndarray, groups: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Accuracy with each group of copies counted once (right when every image of it is), its interval from
    resampling the groups: what a model knows of distinct slices when a set holds several copies of some,
    as datasets built from one another do."""
    _, group_of = np.unique(groups, return_inverse=True)
    group_right = np.ones(group_of.max() + 1 if len(group_of) else 0, dtype=bool)
    np.logical_and.at(group_right, group_of, right)
    interval = bootstrap_intervals(
        {"accuracy": lambda indices: group_right[indices].mean()}, len(group_right), resamples, seed
    )
    return {
        "num_groups": int(len(group_right)),
        "num_images": int(len(right)),
        "accuracy": with_interval(group_right.mean() if len(group_right) else np.nan, interval["accuracy"]),
    }


def classification_figures(report: dict, class_names: Sequence[str], title: str) -> dict[str, Figure]:
    confmat = torch.tensor(report["confusion_matrix"])[: len(class_names)]  # the rows of one class each
    return {"confusion_matrix": confusion_matrix_figure(confmat, class_names, title)}


def most_confident_errors(per_image: Sequence[dict], among: Sequence[int], count: int = 16) -> list[int]:
    """Indices (of `among`, indices into `per_image`) of the wrongly classified images, the most confidently
    wrong first: the ones worth a look, for a mislabelled image or a class the model confuses."""
    wrong = [i for i in among if not per_image[i]["correct"]]
    return sorted(wrong, key=lambda i: -per_image[i]["probabilities"][per_image[i]["predicted"]])[:count]


def errors_figure(rows: Sequence[dict], images: Sequence[np.ndarray], columns: int = 4) -> Figure:
    """The images of these per-image rows in a grid, each titled with its true class, the class it was
    given and that class's probability, and its file name."""
    grid_rows = -(-len(rows) // columns)
    figure = Figure(figsize=(3 * columns, 3.3 * grid_rows))
    for index, (row, image) in enumerate(zip(rows, images)):
        axis = figure.add_subplot(grid_rows, columns, index + 1)
        axis.imshow(image, cmap="gray")
        probability = row["probabilities"][row["predicted"]]
        axis.set_title(f"{row['label']} -> {row['predicted']} {probability:.0%}\n{Path(row['file']).name}", fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    return figure
