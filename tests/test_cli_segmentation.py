"""train.py and evaluate.py with configs/seg.yaml on a tiny generated COCO export."""

from __future__ import annotations

import json

from tests.conftest import SEG_CONFIG as CONFIG
from tests.conftest import TINY_SEG as TINY
from tests.conftest import run_script


def test_train_then_evaluate_segmentation(coco_root, tmp_path):
    result = run_script("train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY,
                        "--trainer.max_epochs", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Segmentation data train: 8 images, 2 with an empty mask" in result.stderr
    best = tmp_path / "runs" / "seg" / "checkpoints" / "best.ckpt"
    assert best.is_file() and (best.parent / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "seg").glob("version_*/events.out.tfevents.*"))

    result = run_script("evaluate.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY,
                        "--ckpt_path", str(best), "--output_dir", "report", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["split"] == "val" and report["num_images"] == 6
    assert len(report["per_image_iou"]) == 6
    assert 0 <= report["iou_global"] <= 1 and 0 <= report["dice_per_image"] <= 1
    assert report["empty_ground_truth"]["images"] == 1
    assert set(report["per_image_iou_quantiles"]) == {"q10", "q25", "q50", "q75", "q90"}
    for figure in ("worst_cases.png", "best_cases.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "global (pixels pooled)" in result.stdout


def test_missing_annotation_file_is_one_line(coco_root, tmp_path):
    (coco_root / "valid" / "_annotations.coco.json").unlink()
    result = run_script("train.py", "--config", CONFIG, "--data.root", str(coco_root), *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("valid/_annotations.coco.json: annotation file missing")
