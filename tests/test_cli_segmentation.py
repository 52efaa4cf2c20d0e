"""train.py and evaluate.py with configs/seg.yaml on a tiny generated COCO export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.metrics import THRESHOLD_GRID, segmentation_scores
from evaluation.segmentation import stats_of_rows
from tests.conftest import EMPTY_IMAGE, evaluate_report, run_folder, run_script
from tests.conftest import SEG_CONFIG as CONFIG
from tests.conftest import TINY_SEG as TINY


def test_train_then_evaluate_segmentation(coco_root, tmp_path):
    result = run_script(
        "train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY, "--trainer.max_epochs", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Segmentation data train: 8 images, 2 with an empty mask" in result.stderr
    run = run_folder(tmp_path, "seg")
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    result = run_script(
        "evaluate.py", "--ckpt_path", str(run), "--output_dir", "report", "--bootstrap", "200", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["data"] == f"{coco_root}, val split" and report["num_images"] == 6
    ious = [row["iou"] for row in report["per_image"]]
    assert [Path(row["file"]).name for row in report["per_image"]][EMPTY_IMAGE] == f"{EMPTY_IMAGE}_jpg.rf.0004.jpg"
    # valid/ has one image without a tumor (EMPTY_IMAGE): it scores 1 when predicted empty, 0 otherwise
    empty = report["empty_ground_truth"]
    assert empty["images"] == 1
    assert ious[EMPTY_IMAGE] == (1.0 if empty["predicted_empty"] else 0.0)
    assert report["iou_per_image"]["value"] == pytest.approx(sum(ious) / 6, abs=1e-4)
    # every image's pixel counts are kept: the global IoU is recomputed from them (scripts/compare_reports.py)
    assert segmentation_scores(stats_of_rows(report["per_image"]))["iou_global"] == pytest.approx(
        report["iou_global"]["value"]
    )
    low, high = report["iou_global"]["ci95"]
    assert low <= report["iou_global"]["value"] <= high
    assert set(report["per_image_iou_quantiles"]) == {"q10", "q25", "q50", "q75", "q90"}
    for figure in ("worst_cases.png", "best_cases.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "global (pixels pooled)" in result.stdout
    # masks cut at the threshold fitted on validation and stored in the checkpoint; tumours counted as boxes
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert report["threshold"] == pytest.approx(float(state["threshold"]))
    assert min(abs(report["threshold"] - t) for t in THRESHOLD_GRID) < 1e-6
    assert len(report["iou_global_by_threshold"]) == len(THRESHOLD_GRID)
    boxes = report["boxes"]
    assert (boxes["true_tumors"], boxes["images_without_tumor"]) == (5, 1)  # one tumour on each other image
    assert boxes["found_tumors"] == sum(row["found_tumors"] for row in report["per_image"])


def test_a_short_run_learns(trained_segmenter, tmp_path):
    assert evaluate_report(trained_segmenter, tmp_path)["iou_global"]["value"] >= 0.4  # an empty prediction scores 0


def test_missing_annotation_file_is_one_line(coco_root, tmp_path):
    (coco_root / "valid" / "_annotations.coco.json").unlink()
    result = run_script("train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("valid/_annotations.coco.json: annotation file missing")
