"""Comparing two evaluate.py reports of the same images: exact differences, images paired by file;
a classifier ensemble scored from its members' reports."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
from evaluation.compare import compare_reports, paired_differences
from evaluation.ensemble import averaged_report, ensemble_reports
from evaluation.segmentation import segmentation_report, stats_of_rows


def segmentation_rows(counts: dict[str, tuple[int, int, int, int]], found: dict[str, int]) -> dict:
    """A report whose images have the given (tp, fp, tn, fn) pixel counts and one true tumour each."""
    return {
        "per_image": [
            {
                "file": file,
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
                "true_tumors": 1,
                "predicted_tumors": 1,
                "found_tumors": found[file],
            }
            for file, (tp, fp, tn, fn) in counts.items()
        ]
    }


def test_segmentation_rows_give_back_the_pixel_counts():
    stats = torch.tensor([[5, 1, 90, 4, 9], [0, 0, 100, 0, 0], [0, 3, 97, 0, 0]])
    rows = segmentation_report(stats, ["a.jpg", "b.jpg", "c.jpg"], resamples=10)["per_image"]
    assert torch.equal(stats_of_rows(rows), stats)


def test_differences_are_exact_and_images_are_paired_by_file():
    first = segmentation_rows({"a": (1, 1, 8, 0), "b": (2, 0, 6, 2)}, {"a": 0, "b": 1})  # IoU 3 / 6
    second = segmentation_rows({"b": (2, 0, 6, 2), "a": (2, 0, 8, 0)}, {"a": 1, "b": 1})  # IoU 4 / 6, other order
    comparison = paired_differences(first, second, resamples=200)
    assert comparison["iou_global"]["first"] == pytest.approx(1 / 2)
    assert comparison["iou_global"]["difference"]["value"] == pytest.approx(4 / 6 - 1 / 2)
    assert comparison["iou_per_image"]["difference"]["value"] == pytest.approx((1.0 + 0.5) / 2 - (0.5 + 0.5) / 2)
    assert comparison["tumor_recall"]["difference"]["value"] == pytest.approx(0.5)
    # only image a differs, and it improves: no resample can show a loss
    assert comparison["tumor_recall"]["difference"]["ci95"][0] >= 0


def test_a_segmenters_detection_and_tumour_slice_scores_are_compared():
    # Rows as evaluate.py writes them for a segmenter of labelled slices: a tumour class per row.
    first = segmentation_rows({"t1": (0, 0, 8, 4), "t2": (3, 1, 6, 1), "h": (0, 2, 10, 0)}, {"t1": 0, "t2": 1, "h": 0})
    second = segmentation_rows({"t1": (2, 0, 8, 2), "t2": (3, 1, 6, 1), "h": (0, 0, 12, 0)}, {"t1": 1, "t2": 1, "h": 0})
    for report in (first, second):
        for row in report["per_image"]:
            row["label"] = "no_tumor" if row["file"] == "h" else "glioma"
    comparison = paired_differences(first, second, resamples=200)
    assert "accuracy" not in comparison  # a tumour class is not a classifier's prediction
    assert comparison["tumor_slices_given_a_tumor"]["difference"]["value"] == pytest.approx(1 - 1 / 2)
    assert comparison["healthy_slices_given_none"]["difference"]["value"] == pytest.approx(1 - 0)
    # Dice per tumour slice: t1 0 -> 4/6, t2 6/8 in both; the healthy slice does not count
    assert comparison["dice_per_tumor_image"]["difference"]["value"] == pytest.approx((4 / 6 + 6 / 8) / 2 - 6 / 8 / 2)
    # t1 given nothing (precision and recall 0) -> precision 2 / 2, recall 2 / 4; t2 3 / 4 in both
    assert comparison["precision_per_tumor_image"]["difference"]["value"] == pytest.approx((1 + 3 / 4) / 2 - 3 / 8)
    assert comparison["recall_per_tumor_image"]["difference"]["value"] == pytest.approx((1 / 2 + 3 / 4) / 2 - 3 / 8)


def test_a_report_against_itself_reordered_differs_by_exactly_zero():
    rows = {
        "per_image": [
            {"file": f"{i}.png", "label": "glioma", "predicted": ["glioma", "no_tumor"][i % 3 == 0]} for i in range(30)
        ]
    }
    shuffled = {"per_image": rows["per_image"][::-1]}  # the same predictions listed in another order
    comparison = paired_differences(rows, shuffled, resamples=200)
    assert comparison["accuracy"]["first"] == pytest.approx(20 / 30)
    assert comparison["accuracy"]["difference"] == {"value": 0.0, "ci95": [0.0, 0.0]}


def test_the_same_images_under_roots_spelled_differently_are_paired():
    # evaluate.py writes each file as its root was given: a relative root in one run, an absolute one in another
    counts = {"p1/a.jpg#t1": (1, 1, 8, 0), "p1/a.jpg#flair": (2, 0, 8, 0), "p2/b.jpg#t1": (0, 0, 8, 2)}
    found = dict.fromkeys(counts, 1)

    def report(root: str, order: list[str]) -> dict:
        return segmentation_rows({root + key: counts[key] for key in order}, {root + key: found[key] for key in order})

    first = report("../shared/lgg/", list(counts))
    second = report("/work/shared/lgg/", list(counts)[::-1])
    comparison = paired_differences(first, second, resamples=50)
    # the same scores image by image: paired right, every resample differs by exactly 0
    assert comparison["iou_per_image"]["difference"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(ValueError, match="cover different images"):  # one sequence missing is still refused
        paired_differences(first, report("/work/shared/lgg/", list(counts)[1:]), resamples=10)


def test_a_classifiers_tumour_sensitivity_and_specificity_are_compared():
    # labels: two typed tumours, a tumour of unknown type (Br35H's partial label), two tumour-free slices
    labels = {"g": "glioma", "m": "meningioma", "u": "tumor", "h1": "no_tumor", "h2": "no_tumor"}
    first = {"g": "meningioma", "m": "no_tumor", "u": "no_tumor", "h1": "glioma", "h2": "no_tumor"}
    second = {"g": "glioma", "m": "pituitary", "u": "no_tumor", "h1": "no_tumor", "h2": "no_tumor"}

    def report(predicted: dict[str, str]) -> dict:
        return {"per_image": [{"file": f, "label": labels[f], "predicted": p} for f, p in predicted.items()]}

    comparison = paired_differences(report(first), report(second), resamples=50)
    assert comparison["tumor_sensitivity"]["first"] == pytest.approx(1 / 3)  # a wrong type is still a tumour
    assert comparison["tumor_sensitivity"]["difference"]["value"] == pytest.approx(2 / 3 - 1 / 3)
    assert comparison["tumor_specificity"]["difference"]["value"] == pytest.approx(1 - 1 / 2)


def test_shared_images_are_paired_across_root_spellings_and_the_rest_left_out():
    labels = {"lgg/p1/a.jpg#t1": "glioma", "lgg/p1/a.jpg#flair": "glioma", "br35h/TRAIN/y1.jpg": "tumor"}
    # the first: a model's own split of several sources, absolute; the second: one source it never saw, relative
    first = {"lgg/p1/a.jpg#t1": "no_tumor", "br35h/TRAIN/y1.jpg": "glioma", "sartaj/gg (1).jpg": "glioma"}
    second = {"lgg/p1/a.jpg#t1": "glioma", "lgg/p1/a.jpg#flair": "no_tumor"}

    def report(root: str, predicted: dict[str, str]) -> dict:
        return {
            "per_image": [
                {"file": root + f, "label": labels.get(f, "glioma"), "predicted": p} for f, p in predicted.items()
            ]
        }

    comparison = paired_differences(
        report("/work/shared/data/", first), report("../shared/data/", second), resamples=20, shared_only=True
    )
    assert comparison["accuracy"]["images"] == 1  # only a.jpg's T1 is in both
    assert comparison["accuracy"]["difference"]["value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cover different images"):  # without the option, refused
        paired_differences(report("/d/", first), report("/d/", second), resamples=10)
    with pytest.raises(ValueError, match="share no image"):
        paired_differences(report("/d/", first), report("/d/", {"x.jpg": "glioma"}), resamples=10, shared_only=True)


def test_reports_of_other_images_are_refused_naming_both_files(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(segmentation_rows({"a": (1, 0, 9, 0)}, {"a": 1})))
    second.write_text(json.dumps(segmentation_rows({"z": (1, 0, 9, 0)}, {"z": 1})))
    with pytest.raises(UserError, match=r"a\.json and .*b\.json: the reports cover different images"):
        compare_reports(first, second)


def classifier_rows(probabilities: dict[str, tuple[float, float]], labels: dict[str, str]) -> dict:
    """A classifier's report: per image, P(glioma) and P(no_tumor), and the class it makes most likely."""
    rows = []
    for file, (glioma, no_tumor) in probabilities.items():
        row = {"file": file, "label": labels[file], "probabilities": {"glioma": glioma, "no_tumor": no_tumor}}
        rows.append(row | {"predicted": "glioma" if glioma > no_tumor else "no_tumor"})
    return {"per_image": rows}


def test_an_ensemble_averages_its_members_probabilities_per_image():
    labels = {"a": "glioma", "b": "no_tumor", "c": "glioma"}
    # a: the first member is wrong but unsure, the second right and sure; c: both wrong
    first = classifier_rows({"a": (0.4, 0.6), "b": (0.1, 0.9), "c": (0.2, 0.8)}, labels)
    second = classifier_rows({"c": (0.3, 0.7), "b": (0.45, 0.55), "a": (0.9, 0.1)}, labels)  # other order
    report = averaged_report([first, second], ["first", "second"], resamples=200)
    rows = {row["file"]: row for row in report["per_image"]}
    assert rows["a"]["probabilities"] == pytest.approx({"glioma": 0.65, "no_tumor": 0.35})
    assert [rows[file]["predicted"] for file in "abc"] == ["glioma", "no_tumor", "no_tumor"]
    accuracy = {name: entry["value"] for name, entry in report["accuracy"].items()}
    assert accuracy == pytest.approx({"ensemble": 2 / 3, "first": 1 / 3, "second": 2 / 3})
    assert paired_differences(first, report, resamples=200)["accuracy"]["difference"]["value"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="different images"):
        averaged_report([first, classifier_rows({"a": (1.0, 0.0)}, labels)], ["first", "one image"])


def test_an_ensemble_of_report_files_refuses_other_images_naming_the_files(tmp_path):
    labels = {"a": "glioma", "z": "glioma"}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(classifier_rows({"a": (0.9, 0.1)}, labels)))
    second.write_text(json.dumps(classifier_rows({"z": (0.9, 0.1)}, labels)))
    with pytest.raises(UserError, match=r"a\.json, .*b\.json: the reports cover different images"):
        ensemble_reports([first, second])


def test_a_partial_label_is_right_for_any_tumour_type():
    def report(predicted: list[str]) -> dict:
        return {"per_image": [
            {"file": f"{index}.jpg", "label": "tumor", "predicted": name, "correct": name != "no_tumor"}
            for index, name in enumerate(predicted)
        ]}  # fmt: skip

    comparison = paired_differences(report(["no_tumor", "glioma"]), report(["pituitary", "meningioma"]), resamples=50)
    assert (comparison["accuracy"]["first"], comparison["accuracy"]["second"]) == (0.5, 1.0)
