"""What evaluate.py reports, as typed objects: computed first (every number with its interval), formatted after,
as metrics.json (`to_json`) and as the table printed (`text`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.bootstrap import interval_text
from evaluation.boxes import format_box_report
from evaluation.classification import format_classification_report
from evaluation.scans import format_scans_report
from evaluation.segmentation import format_segmentation_report


def copies_text(copies: dict[str, int], left_out: int) -> str:
    return f"\n\nWithout the {left_out} images that copy one the model trained or was validated on ({copies}):\n"


@dataclass
class ClassifierReport:
    """A classifier's results on a set of images; `unseen_images` leaves out copies of images it has seen."""

    data: str
    all_images: dict
    per_image: list[dict]
    copies_of_training_images: dict[str, int] | None = None
    unseen_images: dict | None = None
    distinct_images: dict | None = None
    parts: dict[str, dict[str, dict]] = field(default_factory=dict)  # "per_source" / "per_sequence" -> name -> report
    calibration: dict | None = None
    unlike_training_data: dict | None = None

    @property
    def scored(self) -> dict:
        """The report on the images scored: the unseen ones where copies were left out."""
        return self.all_images if self.unseen_images is None else self.unseen_images

    def to_json(self) -> dict:
        sections = {
            "data": self.data,
            "all_images": self.all_images,
            "copies_of_training_images": self.copies_of_training_images,
            "unseen_images": self.unseen_images,
            "distinct_images": self.distinct_images,
            **self.parts,
            "per_image": self.per_image,
            "calibration": self.calibration,
            "unlike_training_data": self.unlike_training_data,
        }
        return {key: value for key, value in sections.items() if value is not None}

    def text(self) -> str:
        text = format_classification_report(self.all_images, f"All {len(self.per_image)} images of {self.data}")
        if self.unseen_images is not None:
            left_out = self.all_images["num_images"] - self.unseen_images["num_images"]
            text += copies_text(self.copies_of_training_images, left_out) + format_classification_report(
                self.unseen_images, f"{self.unseen_images['num_images']} unseen images"
            )
        if self.distinct_images is not None:
            distinct = self.distinct_images
            text += (
                f"\ndistinct images (copies among them counted once): accuracy {interval_text(distinct['accuracy'])} "
                f"on {distinct['num_groups']} groups of {distinct['num_images']} images"
            )
        for key, rows in self.parts.items():
            text += f"\n{key.replace('_', ' ')}:" + "".join(
                f"\n  {name}: accuracy {interval_text(row['accuracy'])}, tumor sensitivity "
                f"{interval_text(row['tumor_sensitivity'])}, specificity {interval_text(row['tumor_specificity'])} "
                f"on {row['num_images']} images"
                for name, row in rows.items()
            )
        if self.calibration is not None:
            calibration = self.calibration
            text += (
                f"\ncalibration (temperature {calibration['temperature']:.3f}, fitted on the validation split): "
                f"expected calibration error {calibration['ece_uncalibrated']:.4f} before, "
                f"{calibration['ece_calibrated']:.4f} after; AUROC "
                + ", ".join(
                    f"{name} {'n/a' if value is None else f'{value:.3f}'}"
                    for name, value in calibration["auroc_one_vs_rest"].items()
                )
            )
        if self.unlike_training_data is not None:
            text += (
                f"\nunlike the training data: {self.unlike_training_data['share_flagged']:.1%} of these images "
                "(5% of the validation split by construction)"
            )
        return text


@dataclass
class SegmenterReport:
    """A segmenter's results on a set of images: the model's decision settings, the report on all images
    (`all_images`: segmentation_report plus boxes, the IoU by threshold), on the unseen ones, and per part."""

    data: str
    settings: dict  # threshold, min_tumor_area, tumor_area_threshold, detection_threshold
    all_images: dict
    copies_of_training_images: dict[str, int] | None = None
    unseen_images: dict | None = None
    parts: dict[str, dict[str, dict]] = field(default_factory=dict)
    scans: dict | None = None  # evaluation.scans.scans_report, where the images are slices of scans

    def to_json(self) -> dict:
        sections = {
            "data": self.data,
            **self.settings,
            **self.all_images,
            **self.parts,
            "copies_of_training_images": self.copies_of_training_images,
            "unseen_images": self.unseen_images,
            "scans": self.scans,
        }
        return {key: value for key, value in sections.items() if value is not None}

    def text(self) -> str:
        text = format_segmentation_report(self.all_images, f"All {self.all_images['num_images']} images of {self.data}")
        for key, rows in self.parts.items():
            for name, part in rows.items():
                text += "\n\n" + format_segmentation_report(part, f"{key.removeprefix('per_')} {name}")
        if self.unseen_images is not None:
            left_out = self.all_images["num_images"] - self.unseen_images["num_images"]
            text += copies_text(self.copies_of_training_images, left_out) + format_segmentation_report(
                self.unseen_images, f"{self.unseen_images['num_images']} unseen images"
            )
        if self.scans is not None:
            text += "\n\n" + format_scans_report(self.scans)
        settings = self.settings
        return text + (
            f"\nmasks: probability >= {settings['threshold']:.2f} (the model's threshold, stored with it), tumours "
            f"under {settings['min_tumor_area']} px dropped, a tumour only where at least "
            f"{settings['tumor_area_threshold']:.0f} px reach {settings['detection_threshold']:.2f}\n"
            f"{format_box_report(self.all_images['boxes'])}"
        )
