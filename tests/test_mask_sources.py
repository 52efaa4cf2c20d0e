"""Segmentation data from every layout a user has: figshare .mat slices, image/mask folders with
patients, masks beside images, healthy slices; the split grouped by patient; evaluation of a
segmenter on a mixed folder with a seen image left out of the unseen scores."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from common.errors import ConfigError, DatasetError
from datamodules.figshare import read_figshare_slice
from datamodules.mask_sources import BOX_INTERIOR, NO_TUMOR, find_layout, read_source
from datamodules.segmentation import SegmentationDataModule
from datamodules.splits import same_patient
from lightning_modules.segmentation import SegmentationModule
from tests.conftest import (
    EMPTY_IMAGE,
    MRI_DATASET_FOLDERS,
    SEG_CONFIG,
    make_classification_dataset,
    make_coco_split,
    make_mask_folders,
    run_folder,
    run_script,
    tumor_slice,
    write_figshare_slice,
)

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--model.encoder_name", "resnet18", "--data.image_size", "64", "--data.batch_size", "4"]
TINY += ["--data.num_workers", "0", *QUIET]


def datamodule(root, **kwargs) -> SegmentationDataModule:
    module = SegmentationDataModule(root, image_size=64, batch_size=4, num_workers=0, **kwargs)
    module.setup("fit")
    return module


def test_a_figshare_mat_slice_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(-200, 1800, (80, 64)).astype(np.int16)  # not square: a transposition would show
    mask = np.zeros((80, 64), np.uint8)
    mask[10:30, 5:40] = 1
    path = write_figshare_slice(tmp_path / "7.mat", image, mask, 2, "MR024780B")
    with pytest.raises(NotImplementedError, match="HDF reader"):  # a real v7.3 file, as scipy sees it
        scipy.io.loadmat(path)
    slice_ = read_figshare_slice(path)
    expected = np.round((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    assert np.array_equal(slice_.image, expected) and np.array_equal(slice_.mask, mask)
    assert (slice_.label, slice_.patient_id) == ("glioma", "MR024780B")


def test_a_folder_of_mat_files_is_a_source_with_patients_and_classes(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "mat").mkdir()
    for index in range(12):
        image, mask = tumor_slice(rng)
        write_figshare_slice(
            tmp_path / "mat" / f"{index}.mat", image.astype(np.int16) * 4, mask, index % 3 + 1, f"P{index // 2}"
        )
    (tmp_path / "mat" / "cvind.mat").write_bytes(b"")  # the download's fold indices: not a slice
    assert find_layout(tmp_path / "mat") == "figshare .mat"
    dm = datamodule(str(tmp_path / "mat"))
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) + len(val) == 12
    assert {"meningioma", "glioma", "pituitary"} == set(train.labels) | set(val.labels)
    first = read_figshare_slice(tmp_path / "mat" / "0.mat")
    dataset = train if str(tmp_path / "mat" / "0.mat") in train.files else val
    row = dataset.files.index(str(tmp_path / "mat" / "0.mat"))
    resized = cv2.resize(first.mask, (64, 64), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(dataset.masks[row], resized)


def test_the_split_never_puts_one_patient_on_both_sides(tmp_path):
    # 20 patients, among them a family of ids that differ only in a trailing letter: one patient.
    patients = [f"MR{i:03d}" for i in range(16)] + ["MR900B", "MR900D", "MR900G", "MR901"]
    root = make_mask_folders(tmp_path / "pairs", patients, per_patient=3)
    for seed in range(5):
        dm = datamodule(str(root), seed=seed, val_fraction=0.3)
        rows = {line.split(",")[0]: line.split(",")[3] for line in (root / "metadata.csv").read_text().splitlines()[1:]}
        side = {}
        for split in ("train", "val"):
            for file in dm.datasets[split].files:
                patient = same_patient(rows[f"images/{file.rsplit('/', 1)[-1]}"])
                assert side.setdefault(patient, split) == split, f"{patient} on both sides (seed {seed})"
        assert {"train", "val"} == set(side.values())
    assert same_patient("MR900G") == same_patient("MR900B") == "MR900" and same_patient("100572") == "100572"


def test_copies_across_sources_stay_on_one_side(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(10)], per_patient=2)
    other = make_mask_folders(tmp_path / "other", [f"Q{i}" for i in range(10)], per_patient=2, seed=5)
    for name in ("images", "masks"):  # one slice of the first source is also in the second, as another patient
        shutil.copy(root / name / "0.png", other / name / "0.png")
    for seed in range(4):
        dm = datamodule([str(root), str(other)], seed=seed, val_fraction=0.3)
        sides = {split for split in ("train", "val") for f in dm.datasets[split].files if f.endswith("/0.png")}
        assert len(sides) == 1


def test_healthy_slices_get_empty_masks_from_the_training_split_only(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(8)], per_patient=2)
    healthy = make_classification_dataset(tmp_path / "cls", MRI_DATASET_FOLDERS, per_class=6)
    dm = datamodule(str(root), negatives=str(healthy))
    everything = [
        (file, mask, label)
        for split in ("train", "val")
        for file, mask, label in zip(dm.datasets[split].files, dm.datasets[split].masks, dm.datasets[split].labels)
    ]
    healthy_rows = [(file, mask) for file, mask, label in everything if label == NO_TUMOR]
    assert len(healthy_rows) == 6  # Training/notumor only: its Testing/ stays unseen
    assert all("/Training/notumor/" in file and not mask.any() for file, mask in healthy_rows)
    assert all(mask.any() for _, mask, label in everything if label != NO_TUMOR)
    assert any(label == NO_TUMOR for label in dm.datasets["val"].labels)  # the split is stratified by class


def test_healthy_share_sets_how_often_healthy_slices_are_drawn_in_training(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(8)], per_patient=2)
    healthy = make_classification_dataset(tmp_path / "cls", MRI_DATASET_FOLDERS, per_class=6)
    dm = datamodule(str(root), negatives=str(healthy), healthy_share=0.75)
    is_healthy = np.array(dm.datasets["train"].labels) == NO_TUMOR
    assert 0 < is_healthy.mean() < 0.5  # as split, healthy slices are the minority
    weights = np.array(dm.sampling_weights("train"))
    assert weights[is_healthy].sum() == pytest.approx(0.75) and weights[~is_healthy].sum() == pytest.approx(0.25)
    assert len(set(weights[is_healthy])) == 1 and dm.sampling_weights("val") is None
    sampler = dm.train_dataloader().sampler
    draws = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        epoch_draws = list(sampler)
        assert len(epoch_draws) == len(is_healthy) and len(set(epoch_draws)) == len(epoch_draws)  # own augmentations
        draws += [index for index, _ in epoch_draws]
    assert is_healthy[draws].mean() == pytest.approx(0.75, abs=0.05)
    with pytest.raises(ConfigError, match="healthy_share 0.5: the training split has no healthy slices"):
        datamodule(str(root), healthy_share=0.5)
    with pytest.raises(ConfigError, match="healthy_share must be between 0 and 1"):
        SegmentationDataModule(str(root), healthy_share=1.0)


def test_box_labelled_images_train_as_weak_labels_and_stay_out_of_validation(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(8)], per_patient=2)
    boxes = tmp_path / "boxes"
    coco = make_coco_split(boxes / "train", seed=0, count=6)
    make_coco_split(boxes / "valid", seed=1, count=4)
    dm = datamodule(str(root), boxes=str(boxes))
    train, val = dm.datasets["train"], dm.datasets["val"]
    weak = {file: mask for file, mask in zip(train.files, train.masks) if "/boxes/" in file}
    assert sorted(weak) == sorted(str(boxes / "train" / image["file_name"]) for image in coco["images"])
    assert not any("/boxes/" in file for file in val.files)  # validation scores real outlines only
    annotated = {image["file_name"] for image in coco["images"] if image["id"] != EMPTY_IMAGE}
    for file, mask in weak.items():
        assert set(np.unique(mask)) == ({0, BOX_INTERIOR} if file.rsplit("/", 1)[1] in annotated else {0})
    assert all(set(np.unique(mask)) == {0, 1} for file, mask in zip(train.files, train.masks) if file not in weak)
    assert len(dm.training_fingerprints.sha1) == len(train) + len(val)  # the box images count as seen
    shutil.rmtree(boxes / "valid")  # only a box export's train/ is read, so it may be all there is
    assert datamodule(str(root), boxes=str(boxes)).datasets["train"].files == train.files


def test_crops_train_on_part_of_each_slice_with_its_tumour_and_validate_on_whole_slices(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(8)], per_patient=2)
    dm = datamodule(str(root), crop_size=32, augment=False)
    for index in range(len(dm.datasets["train"])):
        image, mask = dm.datasets["train"][index]
        assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        assert mask.any()  # every slice here has a tumour, and its crop holds part of it
    image, mask = dm.datasets["val"][0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    for crop_size, message in ((48, "crop_size must be a multiple of 32"), (96, r"crop_size must be in \[32, 64\]")):
        with pytest.raises(ConfigError, match=message):
            SegmentationDataModule(str(root), image_size=64, crop_size=crop_size)


def test_masks_beside_their_images(tmp_path):
    # Any set laid out as LGG is (a folder per patient); the LGG download itself: tests/test_sources.py
    rng = np.random.default_rng(2)
    for patient in ("case_A", "case_B", "case_C", "case_D"):
        (tmp_path / "pairs" / patient).mkdir(parents=True)
        for index in range(3):
            image, mask = tumor_slice(rng)
            cv2.imwrite(str(tmp_path / "pairs" / patient / f"{patient}_{index}.tif"), image)
            cv2.imwrite(str(tmp_path / "pairs" / patient / f"{patient}_{index}_mask.tif"), mask * 255)
    source = read_source(tmp_path / "pairs")
    assert source.layout == "masks beside images" and len(source.images) == 12
    assert {item.patient for item in source.images} == {"case_A", "case_B", "case_C", "case_D"}
    dm = datamodule(str(tmp_path / "pairs"), val_fraction=0.25)
    assert len(dm.datasets["val"]) == 3  # one whole patient


def test_a_folder_without_segmentation_data_is_one_line(tmp_path):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty: no segmentation data found"):
        datamodule(str(tmp_path / "empty"))
    root = make_mask_folders(tmp_path / "pairs", ["P1", "P2"])
    (root / "masks" / "0.png").unlink()
    with pytest.raises(DatasetError, match=r"pairs/images: 1 images without a mask in masks/, e.g. 0.png"):
        datamodule(str(root))


@pytest.fixture(scope="module")
def outline_segmenter(tmp_path_factory):
    """A segmenter trained for two epochs on image/mask folders plus healthy slices, and its data."""
    work = tmp_path_factory.mktemp("outlines")
    root = make_mask_folders(work / "pairs", [f"P{i}" for i in range(10)], per_patient=2)
    healthy = make_classification_dataset(work / "cls", MRI_DATASET_FOLDERS, per_class=8)
    result = run_script(
        "train.py",
        "--config",
        SEG_CONFIG,
        "--data.root",
        str(root),
        "--data.negatives",
        str(healthy),
        *TINY,
        "--trainer.max_epochs",
        "2",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work, root, healthy


def test_the_tumor_decision_is_fitted_in_training_and_reused_in_evaluation(outline_segmenter):
    work, root, _ = outline_segmenter
    checkpoint = run_folder(work, "seg") / "checkpoints" / "best.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert "tumor_area_threshold" in state
    result = run_script(
        "evaluate.py", "--ckpt_path", str(checkpoint), "--output_dir", "own", "--bootstrap", "20", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "own" / "metrics.json").read_text())
    assert report["tumor_area_threshold"] == float(state["tumor_area_threshold"])
    area = float(state["tumor_area_threshold"])
    for row in report["per_image"]:  # every predicted mask is empty or reaches the fitted area
        predicted = row["tp"] + row["fp"]
        assert predicted == 0 or predicted >= max(area, 1)
    detection = report["detection"]
    assert detection["healthy_slices"] == sum(row["label"] == NO_TUMOR for row in report["per_image"]) > 0
    given = sum(row["tp"] + row["fp"] > 0 for row in report["per_image"] if row["label"] != NO_TUMOR)
    assert detection["tumor_slices_given_a_tumor"]["value"] == pytest.approx(given / detection["tumor_slices"])


def test_recalibrating_a_segmenter_refits_exactly_what_training_fitted(outline_segmenter, tmp_path):
    work, _, _ = outline_segmenter
    checkpoint = run_folder(work, "seg") / "checkpoints" / "best.ckpt"
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    old = {**trained, "threshold": torch.tensor(0.5)}  # as if from before the fits
    for name in ("tumor_area_threshold", "detection_threshold"):
        old.pop(name)
    torch.save({**torch.load(checkpoint, weights_only=True), "state_dict": old}, tmp_path / "old.ckpt")
    result = run_script(
        "scripts/recalibrate.py", "--ckpt_path", str(tmp_path / "old.ckpt"), "--output", "refit/re.ckpt", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("wrote refit/re.ckpt: views 'none', threshold ")  # its folder made
    refitted = torch.load(tmp_path / "refit" / "re.ckpt", weights_only=True)["state_dict"]
    # The same weights, validation split, batches and precision as training's last validation of them.
    for name in SegmentationModule.fitted_buffers:
        assert float(refitted[name]) == float(trained[name]), name
    assert all(torch.equal(refitted[key], trained[key]) for key in trained if key.startswith("net."))


def test_evaluate_a_mixed_folder_scores_the_seen_image_apart(outline_segmenter, tmp_path):
    work, root, healthy = outline_segmenter
    checkpoint = run_folder(work, "seg") / "checkpoints" / "best.ckpt"
    unseen = make_mask_folders(tmp_path / "new", ["N1", "N2", "N3"], per_patient=2, seed=9)
    for name in ("images", "masks"):  # one slice the model trained or was validated on
        shutil.copy(root / name / "0.png", unseen / name / "seen.png")
    with open(unseen / "metadata.csv", "a") as handle:
        handle.write("images/seen.png,masks/seen.png,meningioma,P0\n")
    result = run_script(
        "evaluate.py",
        "--ckpt_path",
        str(checkpoint),
        "--data_root",
        str(unseen),
        str(healthy),
        "--output_dir",
        "mixed",
        "--bootstrap",
        "20",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "mixed" / "metrics.json").read_text())
    assert report["num_images"] == 7 + 2  # 7 tumour slices, and the healthy folder's two Testing/notumor images
    assert report["copies_of_training_images"]["exact copy"] == 1
    assert report["unseen_images"]["num_images"] == 8
    seen = [row for row in report["per_image"] if row["copy_of_training_image"]]
    assert [row["file"].rsplit("/", 1)[-1] for row in seen] == ["seen.png"]
    assert set(report["dice_per_class"]) == {"meningioma", "glioma", "pituitary"}
    hd95 = [row["hd95"] for row in report["per_image"] if row["hd95"] is not None]
    assert report["boundary_distance_px"]["images"] == len(hd95)
    if hd95:
        assert report["boundary_distance_px"]["hd95"]["value"] == pytest.approx(np.mean(hd95), abs=1e-2)
    assert "tumour slices given a tumour" in result.stdout


def test_each_slice_knows_the_folder_it_came_from(tmp_path):
    root = make_mask_folders(tmp_path / "pairs", [f"P{i}" for i in range(6)], per_patient=2)
    other = make_mask_folders(tmp_path / "other", [f"Q{i}" for i in range(6)], per_patient=2, seed=5)
    healthy = make_classification_dataset(tmp_path / "cls", MRI_DATASET_FOLDERS, per_class=6)
    dm = datamodule([str(root), str(other)], negatives=str(healthy))
    assert dm.source_roots == [root, other, healthy]
    for split in ("train", "val"):
        dataset = dm.datasets[split]
        for file, index in zip(dataset.files, dataset.root_of):
            assert file.startswith(f"{dm.source_roots[index]}/"), (file, index)
    assert {int(index) for split in ("train", "val") for index in dm.datasets[split].root_of} == {0, 1, 2}
