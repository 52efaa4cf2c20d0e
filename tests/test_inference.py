"""predict.py, Grad-CAM and ONNX export on tiny checkpoints trained by train.py."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from lightning_modules.classification import ClassificationModule
from lightning_modules.inference import TrainedModel, grad_cam
from lightning_modules.segmentation import SegmentationModule
from tests.conftest import run_script, synthetic_slice


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(3)
    cv2.imwrite(str(folder / "a.png"), synthetic_slice(rng, 0, size=50))
    cv2.imwrite(str(folder / "nested" / "b.jpg"), cv2.cvtColor(synthetic_slice(rng, 3, size=70), cv2.COLOR_GRAY2BGR))
    return folder


def test_predict_writes_tables_masks_and_overlays(trained_classifier, trained_segmenter, images, tmp_path):
    out = tmp_path / "out"
    result = run_script("predict.py", "--cls-ckpt", str(trained_classifier), "--seg-ckpt", str(trained_segmenter),
                        "--output-dir", str(out), str(images), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.jpg"]
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in ("glioma", "meningioma", "no_tumor", "pituitary")]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert row["predicted_class"] == ["glioma", "meningioma", "no_tumor", "pituitary"][int(np.argmax(probabilities))]
        assert 0 <= float(row["tumor_area_fraction"]) <= 1 and row["error"] == ""
    assert json.loads((out / "predictions.json").read_text())[0]["file"] == rows[0]["file"]
    mask = cv2.imread(str(next((out / "masks").glob("*_b.png"))), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 70) and set(np.unique(mask)) <= {0, 255}  # at the input's own size
    assert int(rows[1]["tumor_area_px"]) == int((mask > 0).sum())
    for folder in ("overlays", "gradcam"):
        assert len(list((out / folder).glob("*.png"))) == 2


def test_bad_inputs_get_one_line_each_and_the_rest_is_processed(trained_classifier, images, tmp_path):
    (images / "notes.jpg").write_text("this is not an image")
    cv2.imwrite(str(images / "c.jpg"), cv2.imread(str(images / "a.png")))
    (images / "truncated.jpg").write_bytes((images / "c.jpg").read_bytes()[:40])
    result = run_script("predict.py", "--cls-ckpt", str(trained_classifier), "--output-dir", str(tmp_path / "out"),
                        str(images), str(tmp_path / "missing.png"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert any("notes.jpg: not an image" in e for e in errors)
    assert any("truncated.jpg: not an image" in e for e in errors)
    assert any("missing.png: file not found" in e for e in errors)
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert sum(r["error"] == "" for r in rows) == 3  # a.png, b.jpg and c.jpg


def test_grad_cam_maps_are_normalized_per_image(trained_classifier):
    model = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu"))
    rng = np.random.default_rng(0)
    batch = model.batch([synthetic_slice(rng, label, 40)[:, :, None] for label in range(4)])
    probabilities, cams = grad_cam(model.module.net, batch)
    assert probabilities.shape == (4, 4) and torch.allclose(probabilities.sum(dim=1), torch.ones(4))
    assert torch.allclose(probabilities, model.module(batch).softmax(dim=1), atol=1e-6)
    assert cams.shape[0] == 4 and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_checkpoint_of_the_other_task_is_refused(trained_segmenter):
    with pytest.raises(ValueError, match="a SegmentationModule checkpoint, expected ClassificationModule"):
        TrainedModel.load(trained_segmenter, ClassificationModule, torch.device("cpu"))


ONNX_TOLERANCE = 1e-4  # absolute, on probabilities in [0, 1]


def test_onnx_export_matches_pytorch(trained_classifier, trained_segmenter, tmp_path):
    import onnxruntime

    from export import export_checkpoints

    paths = export_checkpoints(str(trained_classifier), str(trained_segmenter), tmp_path)
    cases = [(paths[0], trained_classifier, ClassificationModule, torch.nn.Softmax(dim=1)),
             (paths[1], trained_segmenter, SegmentationModule, torch.nn.Sigmoid())]  # fmt: skip
    for onnx_path, checkpoint, module_class, activation in cases:
        sidecar = json.loads(onnx_path.with_suffix(".json").read_text())["input"]
        model = TrainedModel.load(checkpoint, module_class, torch.device("cpu"))
        batch = torch.randn(3, sidecar["channels"], sidecar["height"], sidecar["width"])  # batch of 3: dynamic axis
        with torch.no_grad():
            expected = activation(model.module(batch)).numpy()
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (actual,) = session.run(None, {"images": batch.numpy()})
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() < ONNX_TOLERANCE
