"""Segmentation: COCO rasterisation, joint augmentation, metrics, encoder weights, module."""

from __future__ import annotations

import json
import math

import albumentations as A
import cv2
import lightning as L
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from common.errors import ConfigError, UserError
from common.metrics import segmentation_scores, segmentation_stats
from datamodules import DatasetError, SegmentationDataModule
from datamodules.coco import read_coco_split
from datamodules.fingerprints import Fingerprints
from datamodules.mask_sources import BOX_INTERIOR
from datamodules.transforms import AUGMENTATIONS, training_augmentations
from lightning_modules import ClassificationModule, SegmentationModule
from lightning_modules.checkpoints import saved_arguments
from lightning_modules.models import create_segmenter
from lightning_modules.pretrained import PretrainedWeightsError
from lightning_modules.segmentation import fit_tumor_decision, tumor_area_threshold
from lightning_modules.trained_model import TrainedModel
from lightning_modules.tta import run_with_tta
from tests.conftest import CROWD_BOX, CROWD_IMAGE, EMPTY_IMAGE, TUMOR_POLYGONS, make_coco_split


def setup_datamodule(root, **kwargs) -> SegmentationDataModule:
    dm = SegmentationDataModule(str(root), image_size=64, batch_size=4, num_workers=0, **kwargs)
    dm.setup("fit")
    return dm


def test_polygon_masks_match_the_drawn_polygons(coco_root):
    _, masks, _ = read_coco_split(coco_root / "train", None)
    for index, polygon in TUMOR_POLYGONS.items():
        x, y = np.array(polygon[0::2], float), np.array(polygon[1::2], float)
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace formula
        assert abs(int(masks[index].sum()) - area) <= 0.03 * area
        drawn = np.zeros_like(masks[index])
        cv2.fillPoly(drawn, [np.array(polygon).reshape(-1, 2)], 1)
        assert (masks[index] & drawn).sum() >= 0.97 * masks[index].sum()  # the same place, not just the same size


def test_crowd_rle_and_empty_images(coco_root):
    _, masks, report = read_coco_split(coco_root / "train", None)
    x0, y0, x1, y1 = CROWD_BOX
    expected = np.zeros_like(masks[CROWD_IMAGE])
    expected[y0:y1, x0:x1] = 1
    assert np.array_equal(masks[CROWD_IMAGE], expected)
    assert not masks[EMPTY_IMAGE].any()
    assert report.crowd_annotations == 1
    assert report.empty_masks == 2  # images 4 and 7 have no annotation
    assert report.category_ids == {1: 5, 2: 1}


def test_problems_in_the_export_are_counted(coco_root):
    annotation_file = coco_root / "train" / "_annotations.coco.json"
    coco = json.loads(annotation_file.read_text())
    coco["annotations"].append(
        {"id": 99, "image_id": 0, "category_id": 1, "segmentation": [[1, 1, 3, 3]], "iscrowd": 0}
    )
    coco["annotations"].append({"id": 98, "image_id": 1, "category_id": 1, "segmentation": [], "iscrowd": 0})
    coco["images"].append({"id": 50, "file_name": "gone.jpg", "height": 64, "width": 64})
    annotation_file.write_text(json.dumps(coco))
    cv2.imwrite(str(coco_root / "train" / "stray.jpg"), np.zeros((8, 8), np.uint8))
    with pytest.warns(UserWarning, match="gone.jpg: listed in _annotations.coco.json but missing"):
        paths, _, report = read_coco_split(coco_root / "train", None)
    assert report.degenerate_polygons == 1 and report.missing_files == ["gone.jpg"] and report.unlisted_files == 1
    assert len(paths) == 8


def test_augmentation_moves_the_mask_with_the_image(coco_root):
    dm = setup_datamodule(coco_root)
    dataset = dm.datasets["train"]
    torch.manual_seed(0)
    for _ in range(20):
        for index in (0, 1, CROWD_IMAGE):
            image, mask = dataset[index]
            assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
            bright = image.mean(dim=0) > image.mean(dim=0).quantile(0.99) * 0.8  # the drawn tumor
            overlap = (bright & (mask[0] > 0)).sum() / (bright | (mask[0] > 0)).sum()
            assert overlap > 0.8


@pytest.mark.parametrize("recipe", AUGMENTATIONS)
def test_every_augmentation_recipe_moves_the_mask_with_the_image(recipe):
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 1
    image = np.repeat(mask[..., None] * 200 + 30, 3, axis=2).astype(np.uint8)
    # What moves pixels moves the mask too; image-only transforms move nothing (and may invert the contrast,
    # which would hide the tumour from the threshold below).
    spatial = [t for t in training_augmentations(recipe) if not isinstance(t, A.ImageOnlyTransform)]
    assert spatial
    transform = A.Compose(spatial, seed=0)
    for _ in range(50):
        out = transform(image=image, mask=mask)
        gray = cv2.cvtColor(out["image"], cv2.COLOR_RGB2GRAY)
        _, tumour = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        moved = out["mask"].astype(bool)
        assert (tumour.astype(bool) & moved).sum() / (tumour.astype(bool) | moved).sum() > 0.8


def test_the_strong_recipe_reaches_the_training_images_only(coco_root):
    dm = setup_datamodule(coco_root, augment="strong")
    noise = [[isinstance(t, A.GaussNoise) for t in dm.datasets[split].transform] for split in ("train", "val")]
    assert any(noise[0]) and not any(noise[1])


def test_an_unknown_augmentation_recipe_is_named_in_one_line(coco_root):
    with pytest.raises(ConfigError, match="^augment 'heavy': use true, false or one of light, strong, sequences$"):
        SegmentationDataModule(str(coco_root), augment="heavy")


def test_test_split_falls_back_to_valid(coco_root):
    dm = setup_datamodule(coco_root)
    assert dm.test_split_name == "val" and set(dm.datasets) == {"train", "val"}


def test_metrics_of_perfect_and_empty_predictions():
    target = torch.zeros(3, 1, 8, 8, dtype=torch.int)
    target[0, 0, 2:6, 2:6] = 1
    target[1, 0, :3, :3] = 1  # image 2 has no tumor
    perfect = segmentation_stats()
    perfect.update(target.float(), target)
    assert segmentation_scores(perfect.compute()) == {
        "iou_global": 1.0,
        "dice_global": 1.0,
        "iou_per_image": 1.0,
        "dice_per_image": 1.0,
        "iou_per_tumor_image": 1.0,
        "dice_per_tumor_image": 1.0,
    }
    empty = segmentation_stats()
    empty.update(torch.zeros_like(target, dtype=torch.float), target)
    scores = segmentation_scores(empty.compute())
    assert scores["iou_global"] == 0.0 and scores["dice_global"] == 0.0 and scores["iou_per_tumor_image"] == 0.0
    assert scores["iou_per_image"] == pytest.approx(1 / 3)  # only the empty image, correctly left empty


def test_local_encoder_checkpoint_is_loaded_into_the_encoder(tmp_path):
    torch.manual_seed(1)
    source = create_segmenter("resnet18", None).encoder.state_dict()
    checkpoint = {f"module.{k}": v for k, v in source.items()}  # a wrapped torchvision-style file
    checkpoint["fc.weight"], checkpoint["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(checkpoint, path)
    torch.manual_seed(2)
    model = create_segmenter("resnet18", str(path))
    for key, value in source.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_any_smp_architecture_by_name_around_the_loaded_encoder(tmp_path):
    source = create_segmenter("resnet18").encoder.state_dict()
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(source, path)
    model = create_segmenter("resnet18", str(path), arch="unetplusplus")
    assert all(torch.equal(model.encoder.state_dict()[key], value) for key, value in source.items())
    assert type(model) is smp.UnetPlusPlus and model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(UserError, match="unknown arch 'unet3d': use one of unet, unetplusplus, "):
        create_segmenter("resnet18", arch="unet3d")


def test_wrong_encoder_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match="other.pth: does not fit this encoder"):
        create_segmenter("resnet18", str(path))


def save_classification_checkpoint(path, model: str, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """A checkpoint as train.py writes it (the parts encoder loading reads); returns the network's weights."""
    module = ClassificationModule(
        model=model, in_channels=in_channels, model_kwargs={} if model != "residual_cnn" else None
    )
    hparams = {"_class_path": "lightning_modules.ClassificationModule", **module.hparams}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    return module.net.state_dict()


@pytest.mark.parametrize("as_run_folder", [False, True])
def test_a_classifier_checkpoint_becomes_the_encoder(tmp_path, as_run_folder):
    torch.manual_seed(4)
    checkpoint = tmp_path / "cls" / "version_0" / "checkpoints" / "best.ckpt"
    classifier = save_classification_checkpoint(checkpoint, "resnet18", in_channels=1)
    torch.manual_seed(5)
    source = checkpoint.parents[1] if as_run_folder else checkpoint
    encoder = create_segmenter("resnet18", str(source), in_channels=3).encoder.state_dict()
    for key, value in encoder.items():
        if key == "conv1.weight":  # grayscale kernels spread over R, G, B: the same response to a gray image
            assert torch.equal(value, classifier[key].repeat(1, 3, 1, 1) / 3)
        else:
            assert torch.equal(value, classifier[key]), key
    assert not set(classifier) - set(encoder) - {"fc.weight", "fc.bias"}  # all but the head was carried over


def test_a_classifier_of_another_architecture_is_refused_in_one_line(tmp_path):
    checkpoint = tmp_path / "best.ckpt"
    save_classification_checkpoint(checkpoint, "residual_cnn")
    with pytest.raises(
        PretrainedWeightsError,
        match=r"best.ckpt: its classifier is 'residual_cnn', which cannot "
        r"initialise the 'resnet18' encoder",
    ):
        create_segmenter("resnet18", str(checkpoint))


def test_module_runs_a_training_and_a_validation_step(coco_root, tmp_path):
    dm = setup_datamodule(coco_root)
    model = SegmentationModule(encoder_name="resnet18", preview_every_n_epochs=1)
    trainer = L.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    before = next(model.net.decoder.parameters()).detach().clone()
    trainer.fit(model, datamodule=dm)
    assert not torch.equal(before, next(model.net.decoder.parameters()))
    assert {"train/loss", "val/loss", "val/iou_global", "val/iou_per_image", "val/dice_global"} <= set(
        trainer.callback_metrics
    )


def test_fine_tuning_starts_from_every_weight_and_fitted_threshold_of_a_trained_segmenter(trained_segmenter, tmp_path):
    checkpoint = torch.load(trained_segmenter, weights_only=True)
    checkpoint["state_dict"]["threshold"] = torch.tensor(0.35)  # a fitted value no new module starts with
    path = tmp_path / "fitted.ckpt"
    torch.save(checkpoint, path)
    # encoder_weights names no file: with weights_path it must not be read
    module = SegmentationModule(encoder_name="resnet18", encoder_weights="missing.pth", weights_path=str(path))
    module.load_pretrained_weights()  # what on_fit_start does when a fit starts from scratch
    source = TrainedModel.load(path, SegmentationModule, torch.device("cpu"))
    assert module.state_dict().keys() == source.module.state_dict().keys()
    assert all(torch.equal(module.state_dict()[key], value) for key, value in source.module.state_dict().items())
    assert module.threshold.item() == pytest.approx(0.35)
    seen = Fingerprints.from_state(module.pretraining_fingerprints)  # evaluate.py counts its images as seen
    assert seen.same_images(source.training_fingerprints)


def test_start_weights_that_saw_this_runs_images_under_another_split_are_refused(trained_segmenter, tmp_path):
    source = TrainedModel.load(trained_segmenter, SegmentationModule, torch.device("cpu"))
    module = SegmentationModule(encoder_name="resnet18")
    same = source.datamodule()
    same.setup("fit")
    module.load_trained_weights([str(trained_segmenter)], same)  # the data and split it trained on: accepted

    unseen_root = tmp_path / "unseen"
    make_coco_split(unseen_root / "train", seed=5, count=6)
    make_coco_split(unseen_root / "valid", seed=6, count=4)
    module.load_trained_weights([str(trained_segmenter)], setup_datamodule(unseen_root))  # none of its images: accepted

    overlapping = source.datamodule()
    overlapping.setup("fit")
    overlapping.training_fingerprints.sha1 = overlapping.training_fingerprints.sha1[1:]  # one image fewer
    with pytest.raises(ConfigError, match=f"{trained_segmenter}: start weights trained or validated on other images"):
        module.load_trained_weights([str(trained_segmenter)], overlapping)
    with pytest.raises(
        ConfigError, match="a unet on resnet18 of 3-channel images; this run builds a unet on resnet34 of 3"
    ):
        SegmentationModule(encoder_name="resnet34").load_trained_weights([str(trained_segmenter)], same)
    with pytest.raises(ConfigError, match="this run builds a unetplusplus on resnet18 of 3"):
        SegmentationModule(encoder_name="resnet18", arch="unetplusplus").load_trained_weights(
            [str(trained_segmenter)], same
        )


def test_start_weights_are_checked_when_training_starts(trained_segmenter, tmp_path):
    source = TrainedModel.load(trained_segmenter, SegmentationModule, torch.device("cpu"))
    arguments = saved_arguments(source.data_hparams)
    other_split = SegmentationDataModule(**{**arguments, "val_fraction": 0.5})
    module = SegmentationModule(encoder_name="resnet18", weights_path=str(trained_segmenter))
    trainer = L.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"start weights of another validation split: val_fraction 0.15 \(this run: 0.5\)"
    ):
        trainer.fit(module, datamodule=other_split)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: f.unlink(), "_annotations.coco.json: annotation file missing"),
        (lambda f: f.write_text("{not json"), "_annotations.coco.json: not valid JSON"),
        (lambda f: f.write_text('{"images": {}}'), "_annotations.coco.json: not a COCO file"),
    ],
)
def test_bad_annotation_files_name_the_file(coco_root, breakage, message):
    breakage(coco_root / "train" / "_annotations.coco.json")
    with pytest.raises(DatasetError, match=message):
        setup_datamodule(coco_root)


def test_all_empty_masks_is_an_error(coco_root):
    annotation_file = coco_root / "train" / "_annotations.coco.json"
    coco = json.loads(annotation_file.read_text())
    annotation_file.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(DatasetError, match="every mask is empty"):
        setup_datamodule(coco_root)


@pytest.mark.parametrize("content", [b"garbage", b""], ids=["corrupt", "empty"])
def test_unreadable_image_is_skipped_with_a_warning(coco_root, content):
    (coco_root / "valid" / "0_jpg.rf.0000.jpg").write_bytes(content)
    with pytest.warns(UserWarning, match="0_jpg.rf.0000.jpg: unreadable or corrupt image, skipped"):
        dm = setup_datamodule(coco_root)
    assert len(dm.datasets["val"]) == 5


def test_a_split_without_readable_images_is_an_error(coco_root):
    for image in (coco_root / "valid").glob("*.jpg"):
        image.write_bytes(b"")
    with (
        pytest.warns(UserWarning),
        pytest.raises(DatasetError, match="valid: none of its 6 images is readable"),
    ):
        setup_datamodule(coco_root)


def test_annotation_without_segmentation_names_file_and_annotation(coco_root):
    annotation_file = coco_root / "train" / "_annotations.coco.json"
    coco = json.loads(annotation_file.read_text())
    del coco["annotations"][1]["segmentation"]
    annotation_file.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"train/_annotations.coco.json: annotation 1 has no 'segmentation'"):
        setup_datamodule(coco_root)


def test_export_whose_images_are_all_missing_says_so(coco_root):
    annotation_file = coco_root / "train" / "_annotations.coco.json"
    coco = json.loads(annotation_file.read_text())
    annotation_file.write_text(json.dumps({**coco, "images": coco["images"][:1]}))
    (coco_root / "train" / coco["images"][0]["file_name"]).unlink()
    with pytest.warns(UserWarning, match="listed in _annotations.coco.json but missing"):
        with pytest.raises(DatasetError, match=r"train/_annotations.coco.json: none of its 1 listed images is in"):
            setup_datamodule(coco_root)


def test_encoder_weights_are_read_when_training_starts_not_when_built(tmp_path):
    path = tmp_path / "resnet18_imagenet.pth"
    module = SegmentationModule(encoder_name="resnet18", encoder_weights=str(path))  # no file yet: builds anyway
    torch.manual_seed(3)
    source = create_segmenter("resnet18").encoder.state_dict()
    torch.save(source, path)
    module.load_pretrained_weights()  # what on_fit_start does when a fit starts from scratch
    assert all(torch.equal(module.net.encoder.state_dict()[key], value) for key, value in source.items())


def test_only_the_first_convolution_is_adapted_to_other_channels(tmp_path):
    source = create_segmenter("resnet18", in_channels=1).encoder.state_dict()  # conv1 takes one channel
    path = tmp_path / "gray.pth"
    torch.save(source, path)
    model = create_segmenter("resnet18", str(path), in_channels=3)
    assert torch.equal(model.encoder.conv1.weight, source["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    source["layer1.0.conv1.weight"] = torch.zeros(64, 32, 3, 3)  # a later convolution of other channels is an error
    torch.save(source, path)
    with pytest.raises(PretrainedWeightsError, match="gray.pth: does not fit this encoder"):
        create_segmenter("resnet18", str(path), in_channels=3)


def test_pretrained_weights_are_loaded_into_the_network_that_exists(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(create_segmenter("resnet18").encoder.state_dict(), path)
    module = SegmentationModule(encoder_name="resnet18", encoder_weights=str(path))
    parameters = {name: id(value) for name, value in module.net.named_parameters()}
    module.load_pretrained_weights()
    assert {name: id(value) for name, value in module.net.named_parameters()} == parameters


def test_the_tumor_decision_leaves_at_most_two_percent_of_healthy_slices_a_tumor():
    healthy = torch.tensor([0.0] * 90 + [3, 3, 5, 8, 20, 40, 41, 50, 60, 100])  # 100 healthy slices' areas
    threshold = tumor_area_threshold(healthy)
    assert threshold == 51  # two slices (60 and 100 px) may keep a tumour, no more
    assert int((healthy >= threshold).sum()) == 2
    assert tumor_area_threshold(torch.tensor([])) == 0.0  # no healthy slices: any pixel is a tumour


def test_masks_below_the_tumor_area_threshold_are_empty():
    module = SegmentationModule(encoder_name="resnet18")
    logits = torch.full((2, 1, 32, 32), -10.0)
    logits[0, 0, :10, :10] = 10  # 100 px
    logits[1, 0, :4, :4] = 10  # 16 px
    module.tumor_area_threshold.fill_(50)
    masks = module.tumor_masks(logits)
    assert masks[0].sum() == 100 and masks[1].sum() == 0


def test_the_detection_level_is_the_one_finding_most_tumours_within_the_healthy_budget():
    # Areas of 4 tumour slices and 100 healthy ones at three probability levels (low to high).
    tumor = torch.tensor([[900, 400, 200], [300, 60, 0], [80, 10, 0], [30, 0, 0]])
    healthy = torch.zeros(100, 3, dtype=torch.long)
    healthy[:3] = torch.tensor([[500, 300, 100], [70, 5, 0], [40, 0, 0]])  # 2 of 100 may keep a tumour
    areas, has_tumor = torch.cat([tumor, healthy]), torch.tensor([True] * 4 + [False] * 100)
    # Level 0 needs 41 px (the third healthy area, plus 1) and finds 3 tumours, level 1 any pixel (3),
    # level 2 any pixel (1): a tie of 3, which the higher level wins.
    assert fit_tumor_decision(areas, has_tumor) == (1, 1.0)
    assert fit_tumor_decision(areas[:, :1], has_tumor) == (0, 41.0)
    assert fit_tumor_decision(areas[:, 2:], has_tumor) == (0, 1.0)  # only the threshold's own level
    assert fit_tumor_decision(tumor, torch.ones(4, dtype=torch.bool)) == (2, 0.0)  # no healthy slices


def test_a_tumour_found_at_the_detection_level_only_shows_its_area_there():
    module = SegmentationModule(encoder_name="resnet18")
    module.threshold.fill_(0.7)
    module.detection_threshold.fill_(0.3)
    module.tumor_area_threshold.fill_(10)
    logits = torch.full((3, 1, 32, 32), -10.0)
    logits[0, 0, :10, :10], logits[0, 0, :4, :4] = 0.0, 10.0  # 100 px at 0.5, 16 of them above 0.7
    logits[1, 0, :5, :5] = 0.0  # 25 px at 0.5 only: found at the detection level, shown at it
    logits[2, 0, :3, :3] = 0.0  # 9 px at 0.5: below the least area, no tumour
    masks = module.tumor_masks(logits)
    assert [int(mask.sum()) for mask in masks] == [16, 25, 0]
    module.detection_threshold.fill_(0.7)  # as before there was a detection level
    assert [int(mask.sum()) for mask in module.tumor_masks(logits)] == [16, 0, 0]


def test_the_lovasz_loss_weighs_a_one_pixel_tumour_like_a_whole_slice_one():
    module = SegmentationModule(encoder_name="resnet18", dice_weight=0, bce_weight=0, lovasz_weight=2)
    masks = torch.zeros(2, 1, 32, 32)
    masks[0], masks[1, 0, 0, 0] = 1, 1  # a slice of tumour, and a slice with a 1 px tumour
    logits = torch.full((2, 1, 32, 32), -5.0)  # background: a margin of 5, no hinge error
    logits[0] = 1.0  # every pixel right by the margin of 1: IoU surrogate 1, loss 0
    logits[1, 0, 0, 0] = 0.0  # the small tumour on the boundary: hinge error 1, that slice's loss 1
    # Per image: weight 2 x the mean of (0, 1). Over the batch's pixels it would be 2 x 1/1025.
    assert module.loss(logits, masks).item() == pytest.approx(1.0)


def test_the_tversky_loss_charges_a_missed_tumour_pixel_more_than_a_false_one():
    module = SegmentationModule(encoder_name="resnet18", dice_weight=0, bce_weight=0, tversky_weight=1)
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, :4, :8] = 1  # 32 tumour pixels
    missed, doubled = torch.full((2, 1, 1, 32, 32), -30.0)  # sigmoid ~1e-13: clear background
    missed[0, 0, :2, :8] = 30.0  # 16 found, 16 missed
    doubled[0, 0, :6, :8] = 30.0  # all 32 found, 16 false
    # 1 - TP / (TP + 0.3 FP + 0.7 FN)
    assert module.loss(missed, masks).item() == pytest.approx(1 - 16 / (16 + 0.7 * 16), abs=1e-5)
    assert module.loss(doubled, masks).item() == pytest.approx(1 - 32 / (32 + 0.3 * 16), abs=1e-5)


def test_the_focal_loss_is_cross_entropy_scaled_by_the_squared_error():
    module = SegmentationModule(encoder_name="resnet18", dice_weight=0, bce_weight=0, focal_weight=2)
    masks = torch.ones(1, 1, 8, 8)
    logits = torch.zeros(1, 1, 8, 8)  # p = 0.5 everywhere: each pixel's loss (1 - 0.5)^2 x ln 2
    assert module.loss(logits, masks).item() == pytest.approx(2 * 0.25 * math.log(2), rel=1e-5)


def test_a_box_is_fitted_by_any_shape_that_touches_its_rows_and_columns_and_its_inside_is_not_background():
    module = SegmentationModule(encoder_name="resnet18", dice_weight=1, bce_weight=1, box_weight=1)
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, 8:24, 8:24] = BOX_INTERIOR
    background = torch.full((1, 1, 32, 32), -30.0)  # sigmoid ~1e-13: background right, no tumour found

    def predicted(rows: slice | torch.Tensor, columns: slice | torch.Tensor) -> torch.Tensor:
        logits = background.clone()
        logits[0, 0, rows, columns] = 30.0
        return logits

    diagonal = torch.arange(8, 24)
    assert module.loss(predicted(diagonal, diagonal), masks).item() == pytest.approx(0, abs=1e-6)
    # The whole box predicted: its pixels are not background to the Dice and BCE terms (else ~30 a pixel).
    assert module.loss(predicted(slice(8, 24), slice(8, 24)), masks).item() == pytest.approx(0, abs=1e-6)
    # Nothing predicted: Dice 0 of both projections; its top half: rows 2 x 8 / (8 + 16), columns 1.
    assert module.loss(background, masks).item() == pytest.approx(2.0)
    assert module.loss(predicted(slice(8, 16), slice(8, 24)), masks).item() == pytest.approx(1 / 3)
    module.hparams.box_weight = 0  # the box's background around it is still learnt, its inside not at all
    assert module.loss(background, masks).item() == pytest.approx(0, abs=1e-6)


def test_images_of_the_classifier_an_encoder_was_pretrained_from_count_as_seen(sartaj_root, coco_root, tmp_path):
    from lightning_modules.trained_model import TrainedModel
    from tests.conftest import CLS_CONFIG, SEG_CONFIG, TINY_CLS, TINY_SEG, run_folder, run_script

    tiny_resnet = ["--model.model", "resnet18", "--model.model_kwargs", "{}"]
    result = run_script(
        "train.py",
        "--config",
        CLS_CONFIG,
        "--data.root",
        str(sartaj_root),
        *TINY_CLS,
        *tiny_resnet,
        "--trainer.max_epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    classifier = TrainedModel.load(run_folder(tmp_path), None, torch.device("cpu")).training_fingerprints
    result = run_script(
        "train.py",
        "--config",
        SEG_CONFIG,
        "--data.root",
        str(coco_root),
        *TINY_SEG,
        "--model.encoder_weights",
        str(run_folder(tmp_path)),
        "--trainer.max_epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = TrainedModel.load(run_folder(tmp_path, "seg"), None, torch.device("cpu")).training_fingerprints
    assert len(seen) == len(classifier) + 8 + 6  # the classifier's images, then the segmenter's train and valid
    assert {row.tobytes() for row in classifier.sha1} <= {row.tobytes() for row in seen.sha1}


def test_validation_scores_the_mean_of_the_models_views(trained_segmenter):
    trained = TrainedModel.load(trained_segmenter, SegmentationModule, torch.device("cpu"))
    module, datamodule = trained.module, trained.datamodule()
    module.hparams.tta = "hflip"
    trainer = L.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_progress_bar=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    by_views = {}
    for tta in ("hflip", "none"):
        stats = segmentation_stats()
        for images, masks in datamodule.val_dataloader():
            stats.update(module.predict_logits(images, tta).sigmoid(), masks.int())
        by_views[tta] = segmentation_scores(stats.compute())["iou_global"]
    assert float(trainer.callback_metrics["val/iou_global"]) == pytest.approx(by_views["hflip"])
    assert by_views["hflip"] != pytest.approx(by_views["none"])  # so the first line tells the two apart
    assert torch.equal(module.predict_logits(images), run_with_tta(module, images, "hflip"))  # the model's own
    with pytest.raises(ConfigError, match="tta 'mirror': use one of none, hflip, flips"):
        SegmentationModule(encoder_name="resnet18", tta="mirror")
