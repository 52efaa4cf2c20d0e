"""Box-aware segmentation scores, the fitted mask threshold and small-tumour removal, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.metrics import THRESHOLD_GRID, best_threshold, threshold_curve
from common.postprocessing import remove_small_components
from evaluation.boxes import box_report, component_boxes, image_boxes
from lightning_modules import SegmentationModule


def mask_with(*boxes: tuple[int, int, int, int], size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def test_components_become_their_bounding_boxes():
    assert component_boxes(mask_with((2, 3, 10, 8), (20, 20, 25, 30))).tolist() == [[2, 3, 10, 8], [20, 20, 25, 30]]


def test_box_matching_on_known_masks():
    truth = mask_with((0, 0, 10, 10), (20, 20, 30, 30))
    # the first tumour found by a box of IoU 80/100 = 0.8; a false tumour elsewhere; the second one missed
    found = image_boxes(mask_with((0, 0, 10, 8), (0, 30, 5, 35)), truth)
    assert (found.truth, found.predicted, found.matched) == (2, 2, 1)
    assert found.best_iou == pytest.approx([0.8, 0.0])
    # a box of IoU 50/150 < 0.5 finds nothing
    assert image_boxes(mask_with((20, 25, 30, 40)), truth).matched == 0
    empty_truth = image_boxes(mask_with((5, 5, 9, 9)), mask_with())
    report = box_report([found, empty_truth, image_boxes(mask_with(), mask_with())], resamples=50)
    assert report["tumor_recall"]["value"] == pytest.approx(1 / 2)
    assert report["tumor_precision"]["value"] == pytest.approx(1 / 3)  # 1 of 3 predicted tumours is real
    assert report["mean_box_iou"]["value"] == pytest.approx(0.4)
    assert report["false_positive_image_rate"]["value"] == pytest.approx(1 / 2)  # one of two tumour-free images


def test_small_components_are_removed_and_large_ones_kept():
    mask = mask_with((0, 0, 3, 3), (10, 10, 20, 20))  # 9 and 100 pixels
    assert remove_small_components(mask, 10).sum() == 100
    assert remove_small_components(mask, 9).sum() == 109


def test_best_threshold_is_the_one_with_the_highest_global_iou():
    torch.manual_seed(0)
    probabilities, truth = torch.rand(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.6).int()
    probabilities = (probabilities + 0.35 * truth).clamp(max=1)  # tumour pixels lean high
    curve = threshold_curve()
    curve.update(probabilities, truth)
    threshold, iou = best_threshold(curve)

    def iou_at(t: float) -> float:  # TP / (TP + FP + FN), counted directly
        predicted = probabilities >= t
        return float((predicted & (truth == 1)).sum() / (predicted | (truth == 1)).sum())

    expected = max(THRESHOLD_GRID, key=iou_at)
    assert threshold == pytest.approx(expected) and iou == pytest.approx(iou_at(expected))


def test_masks_use_the_stored_threshold_and_minimum_area(tmp_path):
    module = SegmentationModule(encoder_name="resnet18", min_tumor_area=5)
    module.threshold.fill_(0.3)
    path = tmp_path / "module.pt"
    torch.save(module.state_dict(), path)
    restored = SegmentationModule(encoder_name="resnet18", min_tumor_area=5)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert float(restored.threshold) == pytest.approx(0.3)  # carried by the checkpoint's state_dict
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[..., :4, :4] = torch.logit(torch.tensor(0.35))  # 16 pixels at 0.35: above 0.3, below 0.5
    logits[..., 7, 7] = 5.0  # a single confident pixel: under the minimum area
    masks = restored.tumor_masks(logits)
    assert masks.sum() == 16 and not masks[0, 0, 7, 7]
    assert restored.tumor_masks(logits, min_tumor_area=0).sum() == 17
