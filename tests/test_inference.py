"""predict.py, app.py, Grad-CAM, checkpoint loading and ONNX export on tiny checkpoints trained by train.py."""

from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch

from common.errors import ConfigError, UserError
from common.labels import CLASS_NAMES
from common.metrics import best_threshold, threshold_curve
from inference import batches
from inference.bundled import BUNDLED_MODELS, models_to_use
from inference.gradcam import grad_cam
from inference.predictor import Prediction, TumorPredictor
from lightning_modules.calibration import fit_temperature
from lightning_modules.checkpoints import CheckpointError, saved_arguments
from lightning_modules.classification import ClassificationModule
from lightning_modules.models import MeanOfLogits, create_segmenter
from lightning_modules.precision import Hardware, fastest_precision
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.trained_model import TrainedModel
from lightning_modules.tta import TTA_VIEWS, run_with_tta
from tests.conftest import SEG_CONFIG, TINY_SEG, make_coco_split, run_folder, run_script, script_module, synthetic_slice


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
    result = run_script(
        "predict.py",
        "--cls_ckpt",
        str(trained_classifier),
        "--seg_ckpt",
        str(trained_segmenter),
        "--output_dir",
        str(out),
        str(images),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.jpg"]
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in ("glioma", "meningioma", "no_tumor", "pituitary")]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert (
            row["predicted_class"] == ["glioma", "meningioma", "no_tumor", "pituitary"][int(np.argmax(probabilities))]
        )
        assert row["error"] == ""
        assert row["warning"] == (
            ""
            if row["unlike_training_data"] == "0"
            else f"{row['file']}: unlike the images "
            "the classifier was trained on (not an MRI slice like them, or one it is unsure of): "
            "do not trust its class"
        )
    assert json.loads((out / "predictions.json").read_text())[0]["file"] == rows[0]["file"]
    mask = cv2.imread(str(next((out / "masks").glob("*_b.png"))), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 70) and set(np.unique(mask)) <= {0, 255}  # at the input's own size
    assert int(rows[1]["tumor_area_px"]) == int((mask > 0).sum())
    assert float(rows[1]["tumor_area_fraction"]) == pytest.approx(int((mask > 0).sum()) / (70 * 70), abs=1e-6)
    for folder in ("overlays", "gradcam"):
        assert len(list((out / folder).glob("*.png"))) == 2


def test_predict_with_the_segmenter_alone(trained_segmenter, images, tmp_path):
    result = run_script(
        "predict.py", "--seg_ckpt", str(trained_segmenter), "--output", "out", str(images), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 2 and "predicted_class" not in rows[0] and not list((tmp_path / "out").glob("gradcam"))
    for row in rows:
        mask = cv2.imread(str(tmp_path / "out" / row["mask_file"]), cv2.IMREAD_UNCHANGED)
        assert int(row["tumor_area_px"]) == int((mask > 0).sum())


def test_without_a_model_the_bundled_ones_are_used():
    assert models_to_use("cls.ckpt", None) == ("cls.ckpt", None)
    bundled = [BUNDLED_MODELS / f"{name}.safetensors" for name in ("classifier", "segmenter")]
    assert models_to_use(None, None) == tuple(str(path) if path.is_file() else None for path in bundled)
    with pytest.raises(UserError, match=r"no model given and none bundled in .*: pass a classifier \(--cls_ckpt\)"):
        TumorPredictor(None, None)


def test_no_bundled_models_where_an_install_has_none_is_one_line(tmp_path, monkeypatch):
    import inference.bundled

    monkeypatch.setattr(inference.bundled, "BUNDLED_MODELS", tmp_path)
    with pytest.raises(UserError, match=f"^{tmp_path}: no bundled models there"):
        models_to_use(None, None)


def test_bad_inputs_get_one_line_each_and_the_rest_is_processed(trained_classifier, images, tmp_path):
    (images / "notes.jpg").write_text("this is not an image")
    cv2.imwrite(str(images / "c.jpg"), cv2.imread(str(images / "a.png")))
    (images / "truncated.jpg").write_bytes((images / "c.jpg").read_bytes()[:40])
    (images / "empty.png").write_bytes(b"")
    cv2.imwrite(str(images / "dot.png"), np.full((1, 1), 200, np.uint8))
    result = run_script(
        "predict.py",
        "--cls_ckpt",
        str(trained_classifier.parents[1]),  # a run folder
        "--output_dir",
        str(tmp_path / "out"),
        str(images),
        str(tmp_path / "missing.png"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, result.stderr
    assert any("notes.jpg: not an image" in e for e in errors)
    assert any("truncated.jpg: not an image" in e for e in errors)
    assert any("empty.png: empty file" in e for e in errors)
    assert any("missing.png: file not found" in e for e in errors)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "far smaller" in line]
    assert warnings == [
        f"warning: {images / 'dot.png'}: a 1x1 image, far smaller than the 32x32 the model was "
        "trained at; the result is unreliable"
    ]
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert {name for name, row in rows.items() if row["error"] == ""} == {"a.png", "b.jpg", "c.jpg", "dot.png"}
    assert "far smaller" in rows["dot.png"]["warning"] and rows["dot.png"]["predicted_class"]


def test_grad_cam_maps_are_normalized_per_image(trained_classifier):
    model = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu"))
    rng = np.random.default_rng(0)
    batch = model.batch([synthetic_slice(rng, label, 40)[:, :, None] for label in range(4)])
    logits, cams = grad_cam(model.module.net, batch)
    assert torch.allclose(logits, model.module(batch), atol=1e-5)
    assert cams.shape == (4, 8, 8)  # the residual CNN's last feature map: 32 px / 4
    assert cams.min() >= 0 and torch.equal(cams.flatten(1).amax(dim=1), torch.ones(4))


@pytest.mark.parametrize(
    ("name", "kwargs", "grid"),
    [
        ("vit_tiny_patch16_224", {"img_size": 64}, 4),  # class-token transformer: 16 px patches
        ("deit_tiny_distilled_patch16_224", {"img_size": 64}, 4),  # two prefix tokens
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 2),  # NHWC features
        ("vit_tiny_patch16_224", {"img_size": 64, "global_pool": "avg", "class_token": False}, 4),
    ],
)
def test_grad_cam_on_transformers(name, kwargs, grid):
    torch.manual_seed(0)
    classifier = timm.create_model(name, num_classes=4, in_chans=1, **kwargs).eval()
    batch = torch.randn(2, 1, 64, 64)
    logits, cams = grad_cam(classifier, batch)
    assert torch.allclose(logits, classifier(batch), atol=1e-5)
    assert cams.shape == (2, grid, grid) and cams.min() >= 0 and cams.max() == 1


class FlatFeatures(torch.nn.Module):
    """A classifier whose features are plain vectors: no map for Grad-CAM to show."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 4)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :16]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def test_grad_cam_degrades_to_no_map():
    logits, cams = grad_cam(FlatFeatures(), torch.randn(3, 1, 4, 4))
    assert logits.shape == (3, 4) and cams is None


def test_checkpoint_of_the_other_task_is_refused(trained_segmenter):
    with pytest.raises(CheckpointError, match="a SegmentationModule checkpoint, expected ClassificationModule"):
        TrainedModel.load(trained_segmenter, ClassificationModule, torch.device("cpu"))


class RunsCode:
    """Unpickling this calls os.makedirs: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_checkpoint_with_code_in_it_is_refused_unrun(trained_classifier, tmp_path):
    checkpoint = torch.load(trained_classifier, map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["hyper_parameters"]["model_kwargs"] = RunsCode(str(marker))
    malicious = tmp_path / "malicious.ckpt"
    torch.save(checkpoint, malicious)
    with pytest.raises(CheckpointError, match="malicious.ckpt: refused: it holds Python objects"):
        TrainedModel.load(malicious, ClassificationModule, torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.parametrize("script", ["predict.py", "app.py"])
def test_not_a_checkpoint_is_one_line(script, images, tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    result = run_script(
        script, "--cls_ckpt", str(bad), *([str(images)] if script == "predict.py" else []), cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: not a PyTorch checkpoint (another kind of file, or a truncated copy)"
    )


def test_checkpoints_need_no_pretrained_weights_file(trained_classifier, images, tmp_path):
    """Trained from a local encoder weights file that is then deleted: evaluate, predict, export
    and resume all still work, from the checkpoint alone."""
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.manual_seed(5)
    torch.save(create_segmenter("resnet18").encoder.state_dict(), weights)
    data = tmp_path / "data"
    make_coco_split(data / "train", seed=0, count=8)
    make_coco_split(data / "valid", seed=1, count=6)
    common = ["--config", SEG_CONFIG, "--data.root", str(data), *TINY_SEG]
    result = run_script(
        "train.py", *common, "--model.encoder_weights", str(weights), "--trainer.max_epochs", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights.unlink()
    run = run_folder(tmp_path, "seg")

    result = run_script("evaluate.py", "--ckpt_path", str(run), "--bootstrap", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(
        "predict.py",
        "--cls_ckpt",
        str(trained_classifier),
        "--seg_ckpt",
        str(run),
        "--output_dir",
        "out",
        str(images),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(
        "export.py", "--seg_ckpt", str(run), "--output_dir", "exports", "--format", "onnx", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "exports" / "segmenter.onnx").is_file()
    result = run_script(
        "train.py",
        *common,
        "--model.encoder_weights",
        str(weights),
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        "last",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


ONNX_TOLERANCE = 1e-4  # absolute, on probabilities in [0, 1]


def test_onnx_export_matches_pytorch(trained_classifier, trained_segmenter, tmp_path):
    import onnxruntime

    from export import export_checkpoints

    paths = export_checkpoints(str(trained_classifier), str(trained_segmenter), tmp_path, format="onnx")
    classifier = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu")).module
    assert float(classifier.temperature) != 1.0  # fitted in training, and part of the exported graph
    cases = [
        (paths[0], trained_classifier, ClassificationModule, classifier.probabilities),
        (paths[1], trained_segmenter, SegmentationModule, torch.sigmoid),
    ]
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


def test_tta_averages_flipped_views_and_flips_maps_back():
    images = torch.randn(2, 1, 4, 6)

    def left_columns(x: torch.Tensor) -> torch.Tensor:  # a "classifier" that looks at one side only
        return x[:, 0, 0, :2]

    expected = (left_columns(images) + left_columns(images.flip(3))) / 2
    assert torch.allclose(run_with_tta(left_columns, images, "hflip"), expected)
    assert torch.equal(run_with_tta(left_columns, images, "none"), left_columns(images))
    # A "segmenter" whose map follows the image: every view, flipped back, is the image again.
    assert torch.allclose(run_with_tta(lambda x: x * 2, images, "flips"), images * 2)


def test_tta_reuses_the_unflipped_output_it_is_given():
    images, calls = torch.randn(2, 1, 4, 6), []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return x * 2

    averaged = run_with_tta(counted, images, "flips", unflipped=images * 2)
    assert len(calls) == len(TTA_VIEWS["flips"]) - 1  # the three flipped views only
    assert torch.allclose(averaged, images * 2)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_model_files_predict_like_their_checkpoints(trained_classifier, trained_segmenter, images, tmp_path, dtype):
    result = run_script(
        "export.py",
        "--cls_ckpt",
        str(trained_classifier),
        "--seg_ckpt",
        str(trained_segmenter),
        "--output_dir",
        "models",
        "--dtype",
        dtype,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cpu = torch.device("cpu")
    for checkpoint, name, module_class in [
        (trained_classifier, "classifier", ClassificationModule),
        (trained_segmenter, "segmenter", SegmentationModule),
    ]:
        path = tmp_path / "models" / f"{name}.safetensors"
        assert path.stat().st_size < Path(checkpoint).stat().st_size / (2 if dtype == "float32" else 4)  # no optimizer
        original, slim = TrainedModel.load(checkpoint, module_class, cpu), TrainedModel.load(path, module_class, cpu)
        assert (slim.image_size, slim.channels, slim.data_hparams) == (
            original.image_size,
            original.channels,
            original.data_hparams,
        )
        for key, value in original.module.state_dict().items():  # buffers (temperature, threshold, BN) exactly
            if key not in dict(original.module.named_parameters()) or dtype == "float32":
                assert torch.equal(slim.module.state_dict()[key], value), key
        batch = torch.randn(2, original.channels, original.image_size, original.image_size)
        with torch.no_grad():
            difference = (original.module(batch) - slim.module(batch)).abs().max()
        assert difference == 0 if dtype == "float32" else difference < 0.05
    classifier = TrainedModel.load(tmp_path / "models" / "classifier.safetensors", ClassificationModule, cpu)
    expected = TrainedModel.load(trained_classifier, ClassificationModule, cpu).training_fingerprints
    assert np.array_equal(classifier.training_fingerprints.sha1, expected.sha1) and len(expected) > 0
    result = run_script(
        "predict.py",
        "--cls_ckpt",
        "models/classifier.safetensors",
        "--seg_ckpt",
        "models/segmenter.safetensors",
        "--output",
        "out",
        str(images),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_loaded_models_run_in_the_layout_they_trained_in(trained_classifier, trained_segmenter):
    for checkpoint in (trained_classifier, trained_segmenter):
        module = TrainedModel.load(checkpoint, None, torch.device("cpu")).module
        weights = [layer.weight for layer in module.modules() if isinstance(layer, torch.nn.Conv2d)]
        assert weights and all(weight.is_contiguous(memory_format=torch.channels_last) for weight in weights)


def test_models_saved_before_a_split_setting_existed_re_derive_the_split_they_trained_on(trained_classifier, tmp_path):
    # A file saved before `near_copies_join_patients` lacks it; the code then joined patients by near copies.
    checkpoint = torch.load(trained_classifier, map_location="cpu", weights_only=False)
    del checkpoint["datamodule_hyper_parameters"]["near_copies_join_patients"]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    older = TrainedModel.load(tmp_path / "older.ckpt", None, torch.device("cpu"))
    assert older.data_hparams["near_copies_join_patients"] is True
    assert older.datamodule().hparams.near_copies_join_patients is True
    trained_now = TrainedModel.load(trained_classifier, None, torch.device("cpu"))
    assert trained_now.data_hparams["near_copies_join_patients"] is False
    assert trained_now.datamodule().hparams.near_copies_join_patients is False


def test_a_model_trained_with_head_gray_gets_its_inputs_brought_to_that_gray(trained_classifier):
    model = TrainedModel.load(trained_classifier, None, torch.device("cpu"))
    slice_ = synthetic_slice(np.random.default_rng(0), 1, size=64)[:, :, None]
    darker = slice_ // 2  # another scanner's slice at half the brightness
    assert (model.batch([slice_]) - model.batch([darker])).abs().mean() > 0.5
    model.data_hparams["head_gray"] = 70  # within a gray level or three (rounding), about 0.01 a level
    assert (model.batch([slice_]) - model.batch([darker])).abs().max() < 0.06


def test_a_foreign_safetensors_file_is_refused_in_one_line(tmp_path, images):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    result = run_script("predict.py", "--cls_ckpt", "other.safetensors", str(images), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("other.safetensors: a safetensors file without this project's header; write one with export.py")
    )


def test_recalibrating_a_checkpoint_refits_what_training_fitted(trained_classifier, tmp_path):
    original = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu")).module
    trained_in, _ = fastest_precision("cpu", Hardware.detect())  # train.py's choice on this machine
    arguments = ["--ckpt_path", str(trained_classifier), "--output", "re.ckpt", "--precision", trained_in]
    result = run_script("scripts/recalibrate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("wrote re.ckpt: temperature ")
    refitted = TrainedModel.load(tmp_path / "re.ckpt", ClassificationModule, torch.device("cpu")).module
    # The same weights, validation split, batches and precision as training's last validation of them.
    for name in ClassificationModule.fitted_buffers:
        assert torch.equal(refitted.get_buffer(name), original.get_buffer(name)), name
    assert torch.equal(refitted.net.head[-1].weight, original.net.head[-1].weight)


def test_a_model_file_refitted_with_head_gray_keeps_its_weights_and_stores_the_gray(trained_segmenter, tmp_path):
    exported = run_script("export.py", "--seg_ckpt", str(trained_segmenter), "--output_dir", "files", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    model_file = tmp_path / "files" / "segmenter.safetensors"
    arguments = ["--ckpt_path", str(model_file), "--head_gray", "70", "--output", "re.ckpt"]
    result = run_script("scripts/recalibrate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = TrainedModel.load(model_file, SegmentationModule, torch.device("cpu"))
    after = TrainedModel.load(tmp_path / "re.ckpt", SegmentationModule, torch.device("cpu"))
    assert after.data_hparams["head_gray"] == 70 and before.data_hparams.get("head_gray") is None
    weights = [name for name in before.module.state_dict() if name not in SegmentationModule.fitted_buffers]
    assert all(torch.equal(after.module.state_dict()[n], before.module.state_dict()[n]) for n in weights)


def test_a_segmenter_refitted_on_its_mirrored_views_keeps_them(trained_segmenter, tmp_path):
    arguments = ["--ckpt_path", str(trained_segmenter), "--output", "re.ckpt", "--precision", "32-true"]
    result = run_script("scripts/recalibrate.py", *arguments, "--tta", "hflip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("wrote re.ckpt: views 'hflip', threshold ")
    trained = TrainedModel.load(tmp_path / "re.ckpt", SegmentationModule, torch.device("cpu"))
    assert trained.module.hparams.tta == "hflip"
    curve, datamodule = threshold_curve(), trained.datamodule()
    datamodule.setup("fit")
    for images, masks in datamodule.val_dataloader():  # the threshold of the best IoU of both views' mean
        curve.update(trained.module.predict_logits(images).sigmoid(), masks.int())
    assert float(trained.module.threshold) == pytest.approx(best_threshold(curve)[0])
    result = run_script("export.py", "--seg_ckpt", "re.ckpt", "--output_dir", "models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = TrainedModel.load(tmp_path / "models" / "segmenter.safetensors", SegmentationModule, torch.device("cpu"))
    assert exported.module.hparams.tta == "hflip"


def perturbed_copy(checkpoint_path: Path, path: Path, **data_changes) -> Path:
    """Another model of the same data: every convolution's weights moved by noise (and the data
    settings changed by `data_changes`)."""
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    checkpoint["state_dict"] = {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.ndim == 4 else value
        for key, value in checkpoint["state_dict"].items()
    }
    checkpoint["datamodule_hyper_parameters"] |= data_changes
    torch.save(checkpoint, path)
    return path


def ensemble_of_two(trained: Path, module_class: type, tmp_path: Path) -> tuple[str, TrainedModel]:
    """recalibrate.py's ensemble of `trained` and a perturbed copy of it, exported as a model file: what the
    script printed, and the ensemble, once its outputs from both files are checked to be the members' mean."""
    other = perturbed_copy(trained, tmp_path / "other.ckpt")
    arguments = ["--ckpt_path", str(trained), str(other), "--output", "ensemble.ckpt", "--precision", "32-true"]
    result = run_script("scripts/recalibrate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    task = "seg" if module_class is SegmentationModule else "cls"
    exported = run_script(
        "export.py", f"--{task}_ckpt", "ensemble.ckpt", "--output_dir", ".", "--dtype", "float32", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]

    members = [TrainedModel.load(path, module_class, torch.device("cpu")) for path in (trained, other)]
    images = torch.randn(2, members[0].channels, members[0].image_size, members[0].image_size)
    with torch.no_grad():
        expected = (members[0].module(images) + members[1].module(images)) / 2
        for path in ("ensemble.ckpt", ("segmenter" if task == "seg" else "classifier") + ".safetensors"):
            ensemble = TrainedModel.load(tmp_path / path, module_class, torch.device("cpu"))
            torch.testing.assert_close(ensemble.module(images), expected)
            assert ensemble.training_fingerprints.same_images(members[0].training_fingerprints)
    return result.stdout, ensemble


def test_segmenters_of_one_split_make_one_model_of_the_mean_of_their_logits(trained_segmenter, tmp_path):
    printed, ensemble = ensemble_of_two(trained_segmenter, SegmentationModule, tmp_path)
    assert printed.startswith("wrote ensemble.ckpt: the mean of 2 segmenters' logits, views 'none', threshold ")
    curve, datamodule = threshold_curve(), ensemble.datamodule()
    datamodule.setup("fit")
    for images, masks in datamodule.val_dataloader():  # the threshold of the best IoU of the mean
        curve.update(ensemble.module.predict_logits(images).sigmoid(), masks.int())
    assert float(ensemble.module.threshold) == pytest.approx(best_threshold(curve)[0])


def test_classifiers_of_one_split_make_one_model_of_the_mean_of_their_logits(trained_classifier, tmp_path):
    printed, ensemble = ensemble_of_two(trained_classifier, ClassificationModule, tmp_path)
    assert printed.startswith("wrote ensemble.ckpt: the mean of 2 classifiers' logits, temperature ")
    datamodule = ensemble.datamodule()
    datamodule.setup("fit")
    with torch.no_grad():
        logits, labels = zip(*((ensemble.module(images), labels) for images, labels in datamodule.val_dataloader()))
    # the temperature of the mean's logits; the familiarity model on both members' pooled features
    assert float(ensemble.module.temperature) == pytest.approx(fit_temperature(torch.cat(logits), torch.cat(labels)))
    member = TrainedModel.load(ensemble.module.hparams.members[0], ClassificationModule, torch.device("cpu"))
    assert ensemble.module.feature_means.shape[1] == 2 * member.module.feature_means.shape[1]
    assert torch.isfinite(ensemble.module.unfamiliar_threshold)


def test_a_model_joins_an_ensemble_as_one_more_member(trained_classifier, tmp_path, monkeypatch):
    ensemble_of_two(trained_classifier, ClassificationModule, tmp_path)  # classifier.safetensors
    third = perturbed_copy(tmp_path / "other.ckpt", tmp_path / "third.ckpt")
    reads, load = [], TrainedModel.load
    monkeypatch.setattr(TrainedModel, "load", lambda path, *args: reads.append(str(path)) or load(path, *args))
    arguments = [
        "--ckpt_path",
        "classifier.safetensors",
        str(third),
        "--output",
        "three.ckpt",
        "--precision",
        "32-true",
    ]
    result = run_script("scripts/recalibrate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("wrote three.ckpt: the mean of 3 classifiers' logits")
    assert sorted(reads) == sorted(["classifier.safetensors", str(third)])  # each file read once
    monkeypatch.undo()
    three = TrainedModel.load(tmp_path / "three.ckpt", ClassificationModule, torch.device("cpu"))
    assert three.module.hparams.members == ["classifier.safetensors#0", "classifier.safetensors#1", str(third)]
    members = [
        TrainedModel.load(path, ClassificationModule, torch.device("cpu")).module
        for path in (trained_classifier, tmp_path / "other.ckpt", third)
    ]
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(three.module(images), sum(member(images) for member in members) / 3)

    alone = ["--ckpt_path", "classifier.safetensors#1", "--output", "one.ckpt", "--precision", "32-true"]
    assert run_script("scripts/recalibrate.py", *alone, cwd=tmp_path).returncode == 0  # one member taken out
    one = TrainedModel.load(tmp_path / "one.ckpt", ClassificationModule, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(one.module(images), members[1](images))

    arguments[1] = "classifier.safetensors#2"
    result = run_script("scripts/recalibrate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: classifier.safetensors: has no member 2 (an ensemble of 2)"
    )


def test_classifiers_of_different_architectures_make_one_ensemble(trained_classifier, tmp_path):
    checkpoint = torch.load(trained_classifier, weights_only=True)
    mobilenet = {"model": "mobilenet_v2", "model_kwargs": {}}  # the residual CNN's split, another network
    checkpoint["hyper_parameters"] |= mobilenet
    checkpoint["state_dict"] = ClassificationModule(**saved_arguments(checkpoint["hyper_parameters"])).state_dict()
    torch.save(checkpoint, tmp_path / "mobilenet.ckpt")
    arguments = ["--ckpt_path", str(trained_classifier), "mobilenet.ckpt", "--output", "ensemble.ckpt"]
    result = run_script("scripts/recalibrate.py", *arguments, "--precision", "32-true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = run_script(
        "export.py", "--cls_ckpt", "ensemble.ckpt", "--output_dir", ".", "--dtype", "float32", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]

    members = [
        TrainedModel.load(path, ClassificationModule, torch.device("cpu")).module
        for path in (trained_classifier, tmp_path / "mobilenet.ckpt")
    ]
    images = torch.randn(2, 1, 32, 32)
    for path in ("ensemble.ckpt", "classifier.safetensors"):
        ensemble = TrainedModel.load(tmp_path / path, ClassificationModule, torch.device("cpu")).module
        assert ensemble.hparams.member_networks == [
            {"model": "residual_cnn", "model_kwargs": members[0].hparams.model_kwargs},
            mobilenet,
        ]
        with torch.no_grad():
            torch.testing.assert_close(ensemble(images), (members[0](images) + members[1](images)) / 2)


@pytest.mark.parametrize(
    ("member_networks", "error"),
    [
        ([{"model": "mobilenet_v2"}], "member_networks: 1 entries for 2 members"),
        ([{}, {"width": 8}], "member_networks: width do not build a network (a member's: model, model_kwargs)"),
    ],
)
def test_member_networks_that_do_not_fit_the_members_are_refused(member_networks, error):
    with pytest.raises(ConfigError) as raised:
        ClassificationModule(members=["a.ckpt", "b.ckpt"], member_networks=member_networks)
    assert str(raised.value) == error


def test_a_member_with_its_network_arguments_in_another_order_is_the_same_network():
    saved = {"model": "residual_cnn", "model_kwargs": {"width": 32, "depths": [1, 2, 2, 2]}, "in_channels": 1}
    reordered = {**saved, "model_kwargs": {"depths": [1, 2, 2, 2], "width": 32}}
    wider = {**saved, "model_kwargs": {"depths": [1, 2, 2, 2], "width": 48}}
    assert ClassificationModule.network_of(reordered) == ClassificationModule.network_of(saved)
    assert ClassificationModule.network_of(wider) != ClassificationModule.network_of(saved)


def test_grad_cam_of_a_network_and_its_copy_as_an_ensemble_is_that_networks(trained_classifier):
    net = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu")).module.net
    batch = torch.randn(3, 1, 32, 32)
    logits, cams = grad_cam(net, batch)
    ensemble_logits, ensemble_cams = grad_cam(MeanOfLogits([net, copy.deepcopy(net)]), batch)
    torch.testing.assert_close(ensemble_logits, logits)
    torch.testing.assert_close(ensemble_cams, cams)


def test_an_ensemble_member_of_another_split_or_task_is_refused_in_one_line(
    trained_segmenter, trained_classifier, tmp_path
):
    other_split = perturbed_copy(trained_segmenter, tmp_path / "other_split.ckpt", val_fraction=0.5)
    for second, message in (
        (other_split, "other_split.ckpt: start weights of another validation split: val_fraction 0.5 (this run: 0.15)"),
        (trained_classifier, "a ClassificationModule checkpoint, expected SegmentationModule"),
    ):
        result = run_script(
            "scripts/recalibrate.py",
            "--ckpt_path",
            str(trained_segmenter),
            str(second),
            "--output",
            "e.ckpt",
            cwd=tmp_path,
        )
        assert result.returncode == 2
        assert message in result.stderr.strip().splitlines()[-1]


def test_onnx_export_of_a_segmenter_averages_its_views(trained_segmenter, tmp_path):
    import onnxruntime

    from export import export_checkpoints

    trained = TrainedModel.load(trained_segmenter, SegmentationModule, torch.device("cpu"))
    checkpoint = torch.load(trained_segmenter, weights_only=False)
    checkpoint["hyper_parameters"]["tta"] = "hflip"
    torch.save(checkpoint, tmp_path / "hflip.ckpt")
    (path,) = export_checkpoints(None, str(tmp_path / "hflip.ckpt"), tmp_path, format="onnx")
    assert json.loads(path.with_suffix(".json").read_text())["tta"] == "hflip"
    batch = torch.randn(2, trained.channels, trained.image_size, trained.image_size)
    with torch.no_grad():
        expected, one_view = (trained.module.predict_logits(batch, tta).sigmoid().numpy() for tta in ("hflip", "none"))
    (actual,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": batch.numpy()}
    )
    assert np.abs(actual - expected).max() < ONNX_TOLERANCE < np.abs(actual - one_view).max()


@pytest.mark.parametrize(
    ("predicted", "tumor_px", "agree", "said"),
    [
        ("no_tumor", 120, False, "the classifier says no tumor (90%), the segmenter finds a tumour of 120 px"),
        ("glioma", 0, False, "the classifier says glioma (90%), the segmenter finds no tumour"),
        ("glioma", 120, True, None),
        ("no_tumor", 0, True, None),
    ],
)
def test_disagreement_of_the_two_models_is_said_in_the_table_and_on_the_page(predicted, tumor_px, agree, said):
    import app

    probabilities = {name: 0.9 if name == predicted else 0.1 / 3 for name in CLASS_NAMES}
    mask = np.zeros((20, 20), np.uint8)
    mask.flat[:tumor_px] = 1
    prediction = Prediction(
        "slice.png", image=np.zeros((20, 20, 3), np.uint8), probabilities=probabilities, tumor_mask=mask
    )
    assert prediction.models_agree is agree and prediction.disagreement == said
    row = prediction.row()
    assert row["models_agree"] == int(agree)
    assert (f"slice.png: the models disagree: {said}" in row["warning"]) == (not agree)
    assert ("**The two models disagree:**" in app.describe(prediction)) == (not agree)


@pytest.mark.parametrize("predicted", ["no_tumor", "glioma"])
@pytest.mark.parametrize("unlike", [True, False])
def test_the_page_puts_unlike_the_training_data_first_and_says_what_it_means_for_no_tumor(predicted, unlike):
    import app

    probabilities = {name: 0.9 if name == predicted else 0.1 / 3 for name in CLASS_NAMES}
    prediction = Prediction("slice.png", probabilities=probabilities, unlike_training_data=unlike)
    message = app.describe(prediction)
    assert message.startswith("### ⚠️ This slice is unlike") == unlike
    assert ('A "no tumor" answer means little here' in message) == (unlike and predicted == "no_tumor")
    assert message.index("**Predicted class:**") > (message.find("unlike") if unlike else -1)


def test_one_model_alone_has_nothing_to_disagree_with():
    prediction = Prediction("slice.png", probabilities={name: 0.25 for name in CLASS_NAMES})
    assert prediction.models_agree is None and "models_agree" not in prediction.row()


def test_options_are_snake_case_and_old_spellings_still_work_with_a_warning(capsys):
    import argparse

    from inference.arguments import add_model_arguments, parse_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parser.add_argument("--data_root", nargs="+")
    parser.add_argument("--output_dir")
    args = parse_arguments(
        parser, ["--cls-ckpt", "a.ckpt", "--data.root", "x", "y", "--output-dir=out", "--seg_ckpt", "b"]
    )
    assert (args.cls_ckpt, args.seg_ckpt, args.data_root, args.output_dir) == ("a.ckpt", "b", ["x", "y"], "out")
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: {old} is deprecated; use {new} (the old spelling goes in the next release)"
        for old, new in (("--cls-ckpt", "--cls_ckpt"), ("--data.root", "--data_root"), ("--output-dir", "--output_dir"))
    ]
    with pytest.raises(SystemExit):  # an option no spelling of which exists is still an error
        parse_arguments(parser, ["--no-such-option", "1"])


def test_recalibrating_fits_in_the_precision_the_tools_serve_in(trained_classifier, tmp_path, monkeypatch):
    recalibrate = script_module("scripts/recalibrate.py")
    # A CPU that computes bf16 natively: training picks bf16 there, the tools float32, and so must the fit.
    monkeypatch.setattr(batches.Hardware, "detect", classmethod(lambda cls: batches.Hardware(None, True)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    used = []

    class Stopped(Exception):
        pass

    def trainer(**options):  # the fit's Trainer: its options noted, the fit itself not run
        used.append(options)
        raise Stopped

    monkeypatch.setattr(recalibrate.L, "Trainer", trainer)
    with pytest.raises(Stopped):
        recalibrate.main(["--ckpt_path", str(trained_classifier), "--output", str(tmp_path / "re.ckpt")])
    assert (used[0]["accelerator"], used[0]["precision"]) == ("cpu", "32-true")


def test_the_tools_run_models_in_float32_on_any_cpu(monkeypatch):
    # Even where the CPU computes bf16 natively (training's choice there), inference stays float32.
    monkeypatch.setattr(batches.Hardware, "detect", classmethod(lambda cls: batches.Hardware(None, True)))
    with batches.inference_precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
