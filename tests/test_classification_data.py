"""ClassificationDataModule: layouts, split, duplicates, image modes, bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CLASS_NAMES, ClassificationDataModule, DatasetError
from datamodules.base import SeededSampler
from datamodules.fingerprints import Fingerprints, find_duplicate_groups
from datamodules.images import load_images, read_image
from tests.conftest import SARTAJ_FOLDERS, synthetic_slice


def setup_datamodule(root: Path, **kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(str(root), image_size=32, num_workers=0, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("layout", ["sartaj_root", "mri_dataset_root"])
def test_both_folder_layouts_map_to_the_same_classes(layout, request):
    root = request.getfixturevalue(layout)
    dm = setup_datamodule(root, val_fraction=0.25)
    labels = np.concatenate([dm.datasets["train"].labels, dm.datasets["val"].labels])
    # every class folder holds 8 training images: each canonical class gets exactly 8
    assert np.bincount(labels, minlength=4).tolist() == [8, 8, 8, 8]
    assert dm.class_names == CLASS_NAMES
    image, label = dm.datasets["val"][0]
    assert tuple(image.shape) == (1, 32, 32) and label == dm.datasets["val"].labels[0]


def test_testing_split_is_used_when_present_and_val_otherwise(sartaj_root, mri_dataset_root):
    assert setup_datamodule(sartaj_root).test_split_name == "test"
    assert setup_datamodule(mri_dataset_root).test_split_name == "val"


def test_stratified_split_keeps_each_class_share_and_is_seeded(tmp_path):
    from tests.conftest import SARTAJ_FOLDERS, make_classification_dataset

    root = make_classification_dataset(tmp_path / "d", SARTAJ_FOLDERS, per_class=20, with_testing=False)
    dm = setup_datamodule(root, val_fraction=0.25, max_phash_distance=None)
    assert np.bincount(dm.datasets["val"].labels, minlength=4).tolist() == [5, 5, 5, 5]
    assert np.bincount(dm.datasets["train"].labels, minlength=4).tolist() == [15, 15, 15, 15]
    again = setup_datamodule(root, val_fraction=0.25, max_phash_distance=None)
    assert np.array_equal(dm.datasets["val"].images, again.datasets["val"].images)
    other_seed = setup_datamodule(root, val_fraction=0.25, max_phash_distance=None, seed=1)
    assert not np.array_equal(dm.datasets["val"].images, other_seed.datasets["val"].images)


def test_exact_duplicates_are_removed_from_the_later_split(sartaj_root, capsys):
    training, testing = sartaj_root / "Training", sartaj_root / "Testing"
    leaked = next((training / "glioma_tumor").glob("*.png"))
    shutil.copy(leaked, testing / "glioma_tumor" / "leak.png")
    shutil.copy(leaked, training / "glioma_tumor" / "copy.png")
    baseline_test = len(list(testing.rglob("*.*"))) - 1

    dm = setup_datamodule(sartaj_root)
    assert len(dm.datasets["test"]) == baseline_test  # the leaked copy is gone
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 32  # the extra training copy too
    all_train = np.concatenate([dm.datasets["train"].images, dm.datasets["val"].images])
    assert not any(np.array_equal(t, v) for t in dm.datasets["test"].images for v in all_train)

    kept = setup_datamodule(sartaj_root, duplicates="keep")
    assert len(kept.datasets["test"]) == baseline_test + 1
    assert len(kept.datasets["train"]) + len(kept.datasets["val"]) == 33


def test_near_duplicates_group_by_perceptual_hash():
    sha1s = ["a", "b", "c", "a"]
    phashes = [0b1111, 0b1110, 0xFFFF0000, 0xFF]
    assert len(set(find_duplicate_groups(sha1s, phashes, None))) == 3  # only the exact copy
    groups = find_duplicate_groups(sha1s, phashes, 1)
    assert groups[0] == groups[1] == groups[3] and groups[2] != groups[0]


def test_near_copies_of_two_known_patients_are_not_copies():
    # Slices at a volume's ends look alike across patients; a chain of them must not join patients
    # (LGG: one group of 6312 of 8778 slices, all of it then in validation). Exact copies still join.
    sha1s, phashes = ["a", "b", "c", "d", "a"], [0b0000, 0b0001, 0b0011, 0b0111, 0b11110000]
    assert len(set(find_duplicate_groups(sha1s, phashes, 1))) == 1  # one chain, patients unknown
    groups = find_duplicate_groups(sha1s, phashes, 1, ["p1", "p1", "p2", None, "p3"])
    assert groups[0] == groups[1] == groups[4]  # the same patient, and an exact copy of another's
    assert groups[2] == groups[3] != groups[0]  # an unknown patient's near copy still joins


def test_recompressed_copy_is_caught_as_near_duplicate(sartaj_root):
    source = next((sartaj_root / "Training" / "glioma_tumor").glob("*.png"))
    cv2.imwrite(
        str(sartaj_root / "Testing" / "glioma_tumor" / "recompressed.jpg"),
        cv2.imread(str(source)),
        [cv2.IMWRITE_JPEG_QUALITY, 85],
    )
    baseline_test = len(list((sartaj_root / "Testing").rglob("*.*"))) - 1
    assert len(setup_datamodule(sartaj_root, max_phash_distance=4).datasets["test"]) == baseline_test
    assert len(setup_datamodule(sartaj_root, max_phash_distance=None).datasets["test"]) == baseline_test + 1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_image_mode_decodes_to_uint8_with_the_requested_channels(tmp_path, mode, channels):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    Image.fromarray(np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)).convert(mode).save(path)
    image = read_image(path, channels)
    assert image.dtype == np.uint8 and image.shape == (30, 20, channels)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        setup_datamodule(tmp_path / "nowhere")


def test_root_without_training_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="no Training/"):
        setup_datamodule(tmp_path / "data")


def test_empty_class_folder_names_the_folder(sartaj_root):
    for image in (sartaj_root / "Training" / "no_tumor").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"no_tumor: class folder holds no images"):
        setup_datamodule(sartaj_root)


def test_unknown_class_folder_names_the_folder(sartaj_root):
    (sartaj_root / "Training" / "astrocytoma").mkdir()
    with pytest.raises(DatasetError, match="unknown class folder 'astrocytoma'"):
        setup_datamodule(sartaj_root)


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 not really a jpeg", b""], ids=["corrupt", "empty"])
def test_unreadable_image_is_skipped_with_a_warning(sartaj_root, content):
    (sartaj_root / "Training" / "glioma_tumor" / "broken.jpg").write_bytes(content)
    with pytest.warns(UserWarning, match="broken.jpg: unreadable or corrupt image, skipped"):
        dm = setup_datamodule(sartaj_root)
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 32


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        (["pituitary_tumor"], "['pituitary']"),
        (SARTAJ_FOLDERS, "['glioma', 'meningioma', 'no_tumor', 'pituitary']"),
    ],
)
def test_a_class_left_without_readable_images_is_an_error(sartaj_root, folders, expected):
    for folder in folders:
        for image in (sartaj_root / "Training" / folder).iterdir():
            image.write_bytes(b"")
    with pytest.warns(UserWarning, match="unreadable or corrupt image, skipped"):
        with pytest.raises(DatasetError, match=rf"Training: no readable image for class\(es\) {re.escape(expected)}"):
            setup_datamodule(sartaj_root)


def test_an_item_with_a_seed_is_augmented_the_same_every_time(sartaj_root):
    dataset = setup_datamodule(sartaj_root).datasets["train"]
    first = [dataset[(index, 7)][0] for index in range(8)]
    assert all(torch.equal(dataset[(index, 7)][0], first[index]) for index in range(8))
    assert not all(torch.equal(dataset[(index, 8)][0], first[index]) for index in range(8))


def test_seeded_sampler_orders_by_seed_and_epoch_only():
    def epoch_items(seed: int, epoch: int, num_replicas: int = 1, rank: int = 0) -> list[tuple[int, int]]:
        sampler = SeededSampler(range(10), num_replicas=num_replicas, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    items = epoch_items(0, 3)
    assert sorted(index for index, _ in items) == list(range(10))
    assert items == epoch_items(0, 3)
    assert items != epoch_items(0, 4) and items != epoch_items(1, 3)
    assert len({seed for _, seed in items}) == 10  # every image its own augmentation
    shards = epoch_items(0, 3, 2, 0) + epoch_items(0, 3, 2, 1)  # DDP: two processes share the epoch
    assert sorted(shards) == sorted(items)


def test_a_weighted_seeded_sampler_draws_by_weight_the_same_in_any_number_of_processes():
    weights = [1.0] * 9 + [9.0]  # the last item half of the draws

    def epoch_items(epoch: int, num_replicas: int = 1, rank: int = 0) -> list[tuple[int, int]]:
        sampler = SeededSampler(range(10), weights=weights, num_replicas=num_replicas, rank=rank, seed=0)
        sampler.set_epoch(epoch)
        return list(sampler)

    items = epoch_items(3)
    assert len(items) == 10 and items == epoch_items(3) and items != epoch_items(4)
    assert len({seed for _, seed in items}) == 10  # an item drawn twice is augmented twice, differently
    assert items[0::2] == epoch_items(3, 2, 0) and items[1::2] == epoch_items(3, 2, 1)  # DDP shares the draws
    last = sum(index == 9 for epoch in range(100) for index, _ in epoch_items(epoch))
    assert last / 1000 == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="9 sampling weights for 10 items"):
        SeededSampler(range(10), weights=weights[:9], num_replicas=1, rank=0)


@pytest.mark.parametrize("weights", [None, [1.0] * 9 + [9.0]])
def test_a_resumed_seeded_sampler_goes_on_where_its_epoch_stood(weights):
    def sampler(epoch: int) -> SeededSampler:
        sampler = SeededSampler(range(10), weights=weights, num_replicas=1, rank=0, seed=0)
        sampler.set_epoch(epoch)
        return sampler

    resumed = sampler(3)
    resumed.resume(3, 4)  # 4 items of epoch 3 trained
    assert list(resumed) == list(sampler(3))[4:]
    resumed.set_epoch(4)  # the epochs after it whole
    assert list(resumed) == list(sampler(4))


def test_several_roots_merge_into_the_four_classes_with_copies_found_across_them(sartaj_root, mri_dataset_root, caplog):
    # The MRI dataset holds a re-encoded SARTAJ image and a byte-identical one, as the real one does.
    sartaj_image = next((sartaj_root / "Training" / "meningioma_tumor").glob("*.png"))
    cv2.imwrite(
        str(mri_dataset_root / "Training" / "meningioma" / "from_sartaj.jpg"),
        cv2.imread(str(sartaj_image)),
        [cv2.IMWRITE_JPEG_QUALITY, 85],
    )
    shutil.copy(sartaj_image, mri_dataset_root / "Training" / "meningioma" / "byte_copy.png")
    # ... and SARTAJ's Testing/ holds a copy of one of the MRI dataset's training images.
    shutil.copy(
        next((mri_dataset_root / "Training" / "glioma").glob("*.png")), sartaj_root / "Testing" / "glioma_tumor"
    )

    dm = ClassificationDataModule(
        [str(sartaj_root), str(mri_dataset_root)], image_size=32, num_workers=0, val_fraction=0.25, max_phash_distance=4
    )
    dm.setup("fit")
    seen = np.concatenate([dm.datasets["train"].images, dm.datasets["val"].images])
    assert len(seen) == 32 + 32 + 1  # the byte copy is dropped, the re-encoded copy kept (in the same split)
    assert np.bincount(np.concatenate([dm.datasets["train"].labels, dm.datasets["val"].labels])).tolist() == [
        16,
        17,
        16,
        16,
    ]
    assert len(dm.datasets["test"]) == 8  # SARTAJ's 8 Testing images; the leaked copy is gone

    original = read_image(sartaj_image, 1)
    near = [
        split
        for split in ("train", "val")
        for image in dm.datasets[split].images
        if np.abs(image.astype(int) - cv2.resize(original, (32, 32), interpolation=cv2.INTER_AREA)[:, :, None]).mean()
        < 4
    ]
    assert len(near) == 2 and len(set(near)) == 1  # the original and its re-encoded copy, on one side of the split
    log = caplog.text
    assert f"{mri_dataset_root}: 34 images, 0 unreadable, 1 dropped as copies, 3 with a copy in another root" in log


def test_fingerprints_of_training_images_catch_copies_after_a_checkpoint_round_trip(sartaj_root, tmp_path):
    dm = setup_datamodule(sartaj_root)
    torch.save({"state": dm.state_dict()}, tmp_path / "state.ckpt")
    fingerprints = Fingerprints.from_state(
        torch.load(tmp_path / "state.ckpt", weights_only=True)["state"]["training_fingerprints"]
    )
    assert len(fingerprints) == len(dm.datasets["train"]) + len(dm.datasets["val"]) == 32
    source = next((sartaj_root / "Training" / "glioma_tumor").glob("*.png"))
    cv2.imwrite(str(tmp_path / "recompressed.jpg"), cv2.imread(str(source)), [cv2.IMWRITE_JPEG_QUALITY, 85])
    cv2.imwrite(str(tmp_path / "new.png"), synthetic_slice(np.random.default_rng(99), 1))
    probes, _ = load_images([source, tmp_path / "recompressed.jpg", tmp_path / "new.png"], 32, 1)
    assert fingerprints.copies_in(probes, max_phash_distance=4) == ["exact copy", "near copy", None]
    assert fingerprints.copies_in(probes, max_phash_distance=None) == ["exact copy", None, None]


def test_the_union_of_fingerprints_holds_every_file_once():
    sha1 = np.arange(4 * 20, dtype=np.uint8).reshape(4, 20)
    first, second = (
        Fingerprints(sha1[:3], np.arange(3, dtype=np.uint64)),
        Fingerprints(sha1[1:], np.arange(1, 4, dtype=np.uint64)),
    )
    union = Fingerprints.union([first, second])
    assert union.sha1.tolist() == sha1.tolist() and union.phash.tolist() == [0, 1, 2, 3]


def test_an_evaluated_folder_knows_the_copies_among_its_images(sartaj_root):
    # What evaluate.py's accuracy over distinct images groups by, without decoding anything again.
    folder = sartaj_root / "Testing" / "glioma_tumor"
    original = sorted(folder.iterdir())[0]
    shutil.copy(original, folder / f"copy_of_{original.name}")
    dm = ClassificationDataModule(str(sartaj_root), image_size=32, num_workers=0)
    dataset, _ = dm.evaluation_images(sartaj_root)
    groups = dataset.fingerprints.duplicate_groups(max_phash_distance=None)
    copies = [dataset.files.index(str(path)) for path in (original, folder / f"copy_of_{original.name}")]
    assert len(groups) == len(dataset) and len(set(groups)) == len(dataset) - 1
    assert groups[copies[0]] == groups[copies[1]]


def test_a_metadata_table_is_a_third_root_split_by_patient(sartaj_root, tmp_path):
    from datamodules.splits import same_patient
    from tests.conftest import make_mask_folders

    patients = [f"MR{i:03d}" for i in range(12)] + ["MR900B", "MR900D", "MR900G"]
    table = make_mask_folders(tmp_path / "figshare", patients, per_patient=3)  # images/ + metadata.csv
    dm = ClassificationDataModule([str(sartaj_root), str(table)], image_size=32, num_workers=0, val_fraction=0.3)
    dm.setup("fit")
    rows = {line.split(",")[0]: line.split(",") for line in (table / "metadata.csv").read_text().splitlines()[1:]}
    side = {}
    for split in ("train", "val"):
        for file, label in zip(dm.datasets[split].files, dm.datasets[split].labels):
            if "/figshare/" in file:
                row = rows[f"images/{file.rsplit('/', 1)[-1]}"]
                assert CLASS_NAMES[label] == row[2]  # the table's label
                assert side.setdefault(same_patient(row[3]), split) == split  # a patient on one side only
    assert len(side) == 13 and set(side.values()) == {"train", "val"}
    dataset, _ = dm.evaluation_images(table)  # and it can be evaluated as a folder
    assert len(dataset) == 45
