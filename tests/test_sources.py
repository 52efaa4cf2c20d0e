"""The sources of issue 45, on generated data: VIA JSON outlines (every shape kind, VIA 1 and 2), the
LGG download's layout with three sequences per slice, labels that say no more than is known, the
partial-label loss against its formula, the sequence-robust augmentations, and leave-one-source-out."""

from __future__ import annotations

import json

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.errors import DatasetError
from common.labels import CLASS_NAMES, LABELS, NO_TUMOR_CLASS, TUMOR_UNKNOWN_TYPE
from datamodules.classification import ClassificationDataModule
from datamodules.contrast import HeadGray, RandomIntensityCurve, RandomSkullStrip, head_mask
from datamodules.images import ChannelOf, load_image_file, parse_source, sequence_named
from datamodules.mask_sources import find_layout, load_masked_image, read_source
from datamodules.via import ViaShapes, read_via_file
from evaluation.breakdown import parts_of
from evaluation.classification import ClassPredictions, classification_report
from lightning_modules.losses import mixed_partial_label_loss, partial_label_loss
from tests.conftest import MRI_DATASET_FOLDERS, make_classification_dataset, tumor_slice


def write_via(folder, entries: dict[str, list[dict]], size: int = 64, version: int = 2) -> None:
    """A VIA annotation file (keys filename + size, as VIA writes them) and its images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(entries))
    data = {}
    for name, shapes in entries.items():
        image, _ = tumor_slice(rng, size)
        cv2.imwrite(str(folder / name), image)
        regions = [{"shape_attributes": shape, "region_attributes": {}} for shape in shapes]
        if version == 1:
            regions = {str(i): region for i, region in enumerate(regions)}
        data[f"{name}{(folder / name).stat().st_size}"] = {"filename": name, "size": 0, "regions": regions}
    (folder / "annotations.json").write_text(json.dumps(data))


def test_every_via_shape_kind_is_drawn_where_it_lies():
    shapes = ViaShapes(
        None,
        (
            {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [2, 2, 8, 8]},
            {"name": "rect", "x": 20, "y": 2, "width": 10, "height": 6},
            {"name": "circle", "cx": 8, "cy": 30, "r": 5},
            {"name": "ellipse", "cx": 30, "cy": 30, "rx": 8, "ry": 3, "theta": np.pi / 2},  # turned upright
            {"name": "point", "cx": 50, "cy": 44},  # no area
        ),
    )
    mask = shapes.draw(48, 64)
    assert mask.shape == (48, 64) and set(np.unique(mask)) == {0, 1}
    assert mask[2:9, 2:13].all() and mask[5, 14] == 0  # the polygon, its corners included
    assert mask[2:8, 20:30].sum() == 60 and mask[5, 30] == 0  # the rectangle: 10 x 6 pixels
    assert mask[30, 8] and mask[30, 12] and not mask[30, 15]  # the circle's radius
    ys, xs = np.nonzero(mask[20:40, 22:40])
    assert ys.max() - ys.min() > 2 * (xs.max() - xs.min())  # the ellipse stands: theta turned its long axis
    assert mask[44, 50] == 0 and mask[40:, 40:].sum() == 0
    circle_area = mask[24:37, 2:15].sum()
    assert abs(circle_area - np.pi * 25) < 12  # sub-pixel drawing: the area of a radius-5 disc


@pytest.mark.parametrize("version", [1, 2])
def test_a_via_folder_is_a_source_of_tumours_of_unknown_type(tmp_path, version):
    square = {"name": "rect", "x": 10, "y": 10, "width": 20, "height": 10}
    write_via(tmp_path / "TRAIN", {"a.png": [square], "b.png": [square, square]}, version=version)
    write_via(tmp_path / "VAL", {"c.png": [{"name": "ellipse", "cx": 30, "cy": 30, "rx": 6, "ry": 4}]})
    assert find_layout(tmp_path) == "VIA outlines"
    source = read_source(tmp_path)
    assert sorted(item.path.name for item in source.images) == ["a.png", "b.png", "c.png"]
    assert {item.label for item in source.images} == {"tumor"}
    image, mask = load_masked_image(source.images[0], 32, 1)
    assert mask.shape == (32, 32) and mask[5:10, 5:15].all() and mask.sum() == 50  # 20x10 px at half size


def test_a_via_file_naming_a_missing_image_or_a_shape_without_coordinates_is_one_line(tmp_path):
    write_via(tmp_path, {"a.png": [{"name": "circle", "cx": 3}]})
    with pytest.raises(DatasetError, match=r"annotations.json: a circle shape without valid coordinates"):
        read_via_file(tmp_path / "annotations.json").popitem()[1].draw(8, 8)
    data = json.loads((tmp_path / "annotations.json").read_text())
    data["x"] = {"filename": "gone.png", "regions": []}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotations.json: annotated image gone.png is not beside it"):
        read_via_file(tmp_path / "annotations.json")


def write_lgg_patient(root, patient: str, slices: int = 4, size: int = 64, seed: int = 0) -> None:
    """A patient folder of the LGG download: NAME_n.jpg holding three sequences as R, G, B, NAME_n_mask.png."""
    rng = np.random.default_rng(seed)
    folder = root / patient
    folder.mkdir(parents=True)
    for n in range(1, slices + 1):
        sequences = [tumor_slice(rng, size) for _ in range(3)]
        mask = sequences[1][1] if n % 2 else np.zeros((size, size), np.uint8)  # odd slices hold a tumour
        rgb = np.stack([image for image, _ in sequences], axis=2)
        cv2.imwrite(str(folder / f"{patient}_{n}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"{patient}_{n}_mask.png"), mask * 255)


def test_an_lgg_slice_is_one_grayscale_slice_per_sequence_with_the_slice_mask(tmp_path):
    write_lgg_patient(tmp_path, "TCGA_CS_4942_19970222")
    write_lgg_patient(tmp_path, "TCGA_DU_5849_19950405", seed=1)
    assert find_layout(tmp_path) == "LGG sequences"
    items = read_source(tmp_path).images
    assert len(items) == 2 * 4 * 3
    assert {item.label for item in items} == {"glioma", "no_tumor"}
    assert {item.patient for item in items} == {"TCGA_CS_4942_19970222", "TCGA_DU_5849_19950405"}
    flair = read_source(tmp_path, sequences=["flair"]).images[0]
    image, mask = load_masked_image(flair, 64, 1)
    stored = cv2.cvtColor(cv2.imread(str(flair.path.path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(image.pixels[:, :, 0], stored[:, :, 1])  # FLAIR is the middle channel
    assert np.array_equal(mask, cv2.imread(str(flair.mask), cv2.IMREAD_GRAYSCALE) > 127)
    rgb, _ = load_masked_image(flair, 64, 3)
    assert np.array_equal(rgb.pixels, np.repeat(image.pixels, 3, axis=2))  # gray stored as RGB for RGB encoders
    assert parse_source(str(flair.path)) == flair.path and load_image_file(str(flair.path), 1).shape == (64, 64, 1)
    with pytest.raises(DatasetError, match="sequences"):
        read_source(tmp_path, sequences=["t2"])


def test_classification_takes_labels_from_lgg_and_via_sources_and_splits_by_patient(tmp_path):
    make_classification_dataset(tmp_path / "kaggle", MRI_DATASET_FOLDERS, per_class=8, with_testing=False)
    for i, patient in enumerate(["TCGA_A_1_1", "TCGA_B_2_2", "TCGA_C_3_3", "TCGA_D_4_4"]):
        write_lgg_patient(tmp_path / "lgg", patient, seed=i)
    square = {"name": "rect", "x": 10, "y": 10, "width": 20, "height": 10}
    write_via(tmp_path / "br35h", {f"y{i}.png": [square] for i in range(6)})
    roots = [str(tmp_path / name) for name in ("kaggle", "lgg", "br35h")]
    data = ClassificationDataModule(roots, image_size=32, batch_size=4, num_workers=0, val_fraction=0.25)
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    labels = np.concatenate([train.labels, val.labels])
    assert (labels == TUMOR_UNKNOWN_TYPE).sum() == 6
    lgg_files = [parse_source(file) for file in train.files + val.files if "TCGA" in file]
    assert len(lgg_files) == 4 * 4 * 3 and all(isinstance(file, ChannelOf) for file in lgg_files)
    patients = {split: {f.split("/")[-2] for f in ds.files if "TCGA" in f} for split, ds in data.datasets.items()}
    assert patients["train"].isdisjoint(patients["val"]) and patients["val"]  # never a patient on both sides


def test_the_partial_label_loss_is_the_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
    labels = torch.tensor([0, TUMOR_UNKNOWN_TYPE, TUMOR_UNKNOWN_TYPE])
    probabilities = logits.softmax(dim=1)
    tumour_classes = [c for c in range(len(CLASS_NAMES)) if c != NO_TUMOR_CLASS]
    expected = torch.stack(
        [-probabilities[0, 0].log(), *(-probabilities[i, tumour_classes].sum().log() for i in (1, 2))]
    )
    assert torch.allclose(partial_label_loss(logits, labels), expected)
    assert torch.allclose(partial_label_loss(logits[2:], labels[2:]), torch.tensor([-np.log(0.75)]).float())
    smoothed = partial_label_loss(logits[:1], labels[:1], smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(logits[:1], labels[:1], label_smoothing=0.1, reduction="none"))
    # Probability moved off "no tumour" onto any tumour type lowers it; among the types it does not choose.
    assert partial_label_loss(torch.tensor([[0.0, 0.0, -3.0, 0.0]]), labels[1:2]) < partial_label_loss(
        torch.tensor([[0.0, 0.0, 3.0, 0.0]]), labels[1:2]
    )
    assert torch.allclose(
        partial_label_loss(torch.tensor([[3.0, 0.0, 0.0, 0.0]]), labels[1:2]),
        partial_label_loss(torch.tensor([[0.0, 0.0, 0.0, 3.0]]), labels[1:2]),
    )


def test_a_mixed_batch_loss_equals_the_soft_target_cross_entropy_for_one_class_labels():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    logits, labels = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 1, 0])
    targets = mixup_target(labels, 4, lam=0.7, smoothing=0.1)
    expected = SoftTargetCrossEntropy()(logits, targets)
    assert torch.allclose(mixed_partial_label_loss(logits, labels, labels.flip(0), 0.7, 0.1), expected)


def test_reports_count_a_tumour_of_unknown_type_found_when_any_type_is_given():
    probabilities = np.eye(4)[[0, 3, 2, 2, 1]] * 0.9 + 0.025
    labels = np.array([0, TUMOR_UNKNOWN_TYPE, TUMOR_UNKNOWN_TYPE, 2, TUMOR_UNKNOWN_TYPE])
    predictions = ClassPredictions([f"{i}.png" for i in range(5)], labels, probabilities)
    assert predictions.correct.tolist() == [True, True, False, True, True]
    report = classification_report(predictions, CLASS_NAMES, NO_TUMOR_CLASS, resamples=20)
    assert report["accuracy"]["value"] == 1.0  # over the two images whose label names one class
    assert report["tumor_sensitivity"]["value"] == pytest.approx(3 / 4)  # glioma + 2 of 3 unknown-type found
    assert len(report["confusion_matrix"]) == len(LABELS)
    assert [row["label"] for row in predictions.per_image(CLASS_NAMES)][1] == "tumor"


def test_reports_are_broken_down_by_source_and_sequence():
    files = ["a/1.png", "a/2.png#flair", "b/3.png#t1", "b/4.png#flair", "b/case_t1ce.nii.gz@7"]
    sequences = [sequence_named(file) for file in files]
    assert sequences == ["", "flair", "t1", "flair", "t1c"]
    parts = parts_of(np.array([0, 0, 1, 1, 1]), ["a", "b"], sequences)
    assert {name: mask.tolist() for name, mask in parts["per_source"].items()} == {
        "a": [True, True, False, False, False],
        "b": [False, False, True, True, True],
    }
    assert {name: mask.tolist() for name, mask in parts["per_sequence"].items()} == {
        "flair": [False, True, False, True, False],
        "t1": [False, False, True, False, False],
        "t1c": [False, False, False, False, True],
    }
    assert parts_of(np.array([0]), ["a"], [""]) == {}


def test_intensity_curves_and_skull_stripping_keep_the_air_black_and_change_the_head():
    rng = np.random.default_rng(0)
    slice_ = np.zeros((64, 64), np.uint8)
    cv2.circle(slice_, (32, 32), 26, 200, -1)  # skull
    cv2.circle(slice_, (32, 32), 22, 90, -1)  # brain
    slice_ = (slice_ + rng.integers(0, 5, slice_.shape)).astype(np.uint8)[:, :, None]
    disc = np.hypot(*np.mgrid[-32:32, -32:32]) <= 25
    head = head_mask(slice_[:, :, 0])
    assert head[disc].all() and head.sum() < np.pi * 29**2  # the head, give or take the blur's pixel or two
    curved = [A.Compose([RandomIntensityCurve(p=1.0)], seed=seed)(image=slice_)["image"] for seed in range(6)]
    assert all((image[0:4, 0:4] == 0).all() for image in curved)
    assert len({int(image[32, 32, 0]) for image in curved}) > 3  # the brain's gray level remapped
    assert any(image[32, 32, 0] > image[32, 8, 0] for image in curved)  # an inversion: brain above skull
    stripped = A.Compose([RandomSkullStrip(margin=(0.08, 0.08), p=1.0)], seed=0)(image=slice_)["image"]  # 5 px
    assert stripped[32, 32, 0] == slice_[32, 32, 0] and stripped[32, 7, 0] == 0  # brain kept, skull ring gone


def test_head_gray_brings_a_bright_source_s_slice_to_the_training_slices_gray_and_keeps_the_air_black():
    slice_ = np.zeros((64, 64, 1), np.uint8)
    cv2.circle(slice_, (32, 32), 26, 220, -1)  # skull, as bright as Br35H's
    cv2.circle(slice_, (32, 32), 22, 130, -1)  # brain: the head's median
    slice_[:4, :4] = 3  # a dark corner of air
    standard = HeadGray(70)(image=slice_)["image"]
    assert standard[32, 32, 0] == 70 and standard[32, 8, 0] == round(220 * 70 / 130) and standard[0, 0, 0] == 2
    darker = HeadGray(70)(image=(slice_ // 2))["image"]  # the same slice at half the brightness: the same result
    assert abs(int(darker[32, 32, 0]) - 70) <= 1 and abs(int(darker[32, 8, 0]) - int(standard[32, 8, 0])) <= 2
    assert (HeadGray(70)(image=np.zeros_like(slice_))["image"] == 0).all()  # blank stays blank


def test_a_model_trained_with_head_gray_sees_it_at_inference():
    from datamodules.transforms import build_transform

    rng = np.random.default_rng(0)
    slice_ = np.zeros((64, 64, 1), np.uint8)
    cv2.circle(slice_, (32, 32), 24, 60, -1)
    slice_ = (slice_ + (slice_ > 0) * rng.integers(0, 20, slice_.shape)).astype(np.uint8)
    standard = build_transform([], 1, head_gray=70)
    brighter = np.clip(slice_.astype(int) * 2, 0, 255).astype(np.uint8)
    assert torch.allclose(standard(image=slice_)["image"], standard(image=brighter)["image"], atol=0.05)
    plain = build_transform([], 1)
    assert not torch.allclose(plain(image=slice_)["image"], plain(image=brighter)["image"], atol=0.05)


def write_case(folder, affine_flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A BraTS-like case in RAS+ voxel order (a head, a tumour near the front on the patient's right), saved
    as is or with its x and y axes stored reversed (LPS, as BraTS volumes are) and the affine saying so."""
    import nibabel as nib

    folder.mkdir(parents=True)
    shape = (48, 48, 12)  # x: left->right, y: posterior->anterior, z: inferior->superior
    x, y, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    head = np.hypot((x - 24) / 20, (y - 24) / 22) <= 1
    head[:, :, :2] = False  # the volume's empty ends
    volume = np.where(head, 100.0 + 5 * (x % 3), 0.0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[26:32, 34:40, 4:8] = 2  # oedema, on the patient's right (high x) and anterior (high y)
    labels[28:30, 36:38, 5:7] = 4  # enhancing tumour inside it
    volume[labels > 0] = 300
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    if affine_flip:
        volume, labels = volume[::-1, ::-1], labels[::-1, ::-1]
        affine = np.array([[-1.0, 0, 0, 47], [0, -1.0, 0, 47], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), folder / "case_flair.nii.gz")
    nib.save(nib.Nifti1Image(volume * 0.01 - 1, affine), folder / "case_t1ce.nii.gz")  # z-scored-like units
    nib.save(nib.Nifti1Image(labels, affine), folder / "case_seg.nii.gz")
    return volume, labels


@pytest.mark.parametrize("affine_flip", [False, True])
def test_nifti_cases_are_axial_slices_as_radiologists_see_them_with_each_sequence_s_tumour(tmp_path, affine_flip):
    write_case(tmp_path / "case1", affine_flip)
    assert find_layout(tmp_path) == "NIfTI volumes"
    items = read_source(tmp_path).images
    assert len(items) == 2 * 10  # two sequences, the 10 slices with a head
    flair = [item for item in items if "flair" in item.path.path.name]
    tumour_slices = [item.path.index for item in flair if item.label == "glioma"]
    assert tumour_slices == [4, 5, 6, 7] and {item.patient for item in items} == {"case1"}
    image, mask = load_masked_image(flair[4], 48, 1)
    rows, columns = np.nonzero(mask)
    # Display: anterior up, the patient's right on the left. The tumour is anterior (y 34-39 of 48) and on the
    # right (x 26-31 of 48): rows 47-39..47-34 = 8..13, columns 47-31..47-26 = 16..21.
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (8, 13, 16, 21)
    t1c = next(item for item in items if "t1ce" in item.path.path.name and item.path.index == 5)
    _, core = load_masked_image(t1c, 48, 1)
    assert core.sum() == 4 and mask.sum() == 36  # T1c shows the core (labels 1, 3, 4), FLAIR the whole tumour
    assert image.pixels.max() == 255 and image.pixels[0, 0, 0] == 0  # windowed inside the head, air black
    z_scored = load_masked_image(t1c, 48, 1)[0].pixels
    assert np.array_equal(z_scored, load_masked_image(flair[5], 48, 1)[0].pixels)  # units do not matter


def test_a_truncated_or_4d_nifti_is_one_line(tmp_path):
    import nibabel as nib

    from datamodules.volumes import read_volume

    write_case(tmp_path / "case1")
    data = (tmp_path / "case1" / "case_flair.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match=r"cut.nii.gz: not a readable NIfTI volume"):
        read_volume(tmp_path / "cut.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(Exception, match=r"4d.nii.gz: a 4D image; expected a 3D volume"):
        read_volume(tmp_path / "4d.nii.gz")


@pytest.mark.slow  # trains and evaluates in processes of their own, as the protocol does
def test_leave_one_source_out_never_trains_on_the_held_out_source(tmp_path):
    import yaml

    from tests.conftest import CLS_CONFIG, TINY_CLS, script_module

    make_classification_dataset(tmp_path / "kaggle", MRI_DATASET_FOLDERS, per_class=8, with_testing=False)
    for i, patient in enumerate(["TCGA_A_1_1", "TCGA_B_2_2"]):
        write_lgg_patient(tmp_path / "lgg", patient, seed=i)
    write_via(
        tmp_path / "br35h",
        {f"y{i}.png": [{"name": "rect", "x": 9, "y": 9, "width": 20, "height": 9}] for i in range(6)},
    )
    roots = {name: str(tmp_path / name) for name in ("kaggle", "lgg", "br35h")}
    script_module("scripts/leave_one_source_out.py").main(
        ["--config", CLS_CONFIG, *(f"--source={name}={root}" for name, root in roots.items()), "--hold_out", "lgg"]
        + ["--root_dir", str(tmp_path / "loso"), "--", *TINY_CLS, "--trainer.max_epochs", "1"]
    )
    run = tmp_path / "loso" / "cls_without_lgg" / "version_0"
    trained_on = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["root"]
    assert trained_on == [roots["kaggle"], roots["br35h"]]
    report = json.loads((run / "evaluation_lgg" / "metrics.json").read_text())
    assert report["data"] == roots["lgg"] and report["all_images"]["num_images"] == 2 * 4 * 3
    assert report["copies_of_training_images"] == {"exact copy": 0, "near copy": 0}  # it saw none of them
    assert set(report["per_sequence"]) == {"t1", "flair", "t1c"}
