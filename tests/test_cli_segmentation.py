"""train.py and evaluate.py with configs/seg.yaml on a tiny generated COCO export."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EMPTY_IMAGE, evaluate_on_training_data, run_folder, run_script
from tests.conftest import SEG_CONFIG as CONFIG
from tests.conftest import TINY_SEG as TINY


def test_train_then_evaluate_segmentation(coco_root, tmp_path):
    result = run_script("train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY,
                        "--trainer.max_epochs", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Segmentation data train: 8 images, 2 with an empty mask" in result.stderr
    run = run_folder(tmp_path, "seg")
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    result = run_script("evaluate.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY,
                        "--ckpt_path", str(run), "--output_dir", "report", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["split"] == "val" and report["num_images"] == 6
    assert len(report["per_image_iou"]) == 6
    # valid/ has one image without a tumor (EMPTY_IMAGE): it scores 1 when predicted empty, 0 otherwise
    empty = report["empty_ground_truth"]
    assert empty["images"] == 1
    assert report["per_image_iou"][EMPTY_IMAGE] == (1.0 if empty["predicted_empty"] else 0.0)
    assert report["iou_per_image"] == pytest.approx(sum(report["per_image_iou"]) / 6, abs=1e-4)
    assert set(report["per_image_iou_quantiles"]) == {"q10", "q25", "q50", "q75", "q90"}
    for figure in ("worst_cases.png", "best_cases.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "global (pixels pooled)" in result.stdout


def test_a_short_run_learns(trained_segmenter, tmp_path):
    report = evaluate_on_training_data(CONFIG, TINY, trained_segmenter, tmp_path)
    assert report["iou_global"] >= 0.4  # an empty prediction scores 0


def test_missing_annotation_file_is_one_line(coco_root, tmp_path):
    (coco_root / "valid" / "_annotations.coco.json").unlink()
    result = run_script("train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("valid/_annotations.coco.json: annotation file missing")
