"""Scans: a NIfTI volume predicted slice by slice gets its mask back voxel-exact, in the input's own voxel
order, shape and affine, whatever its orientation; predict.py writes the mask volume and a row per scan."""

from __future__ import annotations

import csv
import itertools

import nibabel as nib
import numpy as np
import pytest

from datamodules.volumes import HEAD_GRAY, read_volume, window_to_uint8
from inference.predictor import Prediction
from inference.scans import mask_volume, scan_slices, scan_summary


def synthetic_scan(path, permutation: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> np.ndarray:
    """A head with a bright off-centre tumour, built in RAS+ voxel order (2 x 1 x 3 mm voxels), then stored with
    its axes permuted and flipped and the affine saying so. Returns the tumour in the stored voxel order."""
    shape = (20, 24, 10)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    head = np.hypot((x - 10) / 9, (y - 12) / 11) <= 1
    tumour = (x >= 12) & (x < 16) & (y >= 15) & (y < 19) & (z >= 3) & (z < 6)
    volume = np.where(head, 100.0, 0.0) + 200.0 * tumour
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    # Stored axis k is RAS axis permutation[k], reversed where flips[k]: the affine maps stored voxels to RAS mm.
    stored = volume.transpose(permutation)
    stored_tumour = tumour.transpose(permutation)
    new_affine = np.zeros((4, 4))
    new_affine[3, 3] = 1
    for k, (axis, flip) in enumerate(zip(permutation, flips)):
        length = stored.shape[k]
        if flip:
            stored, stored_tumour = np.flip(stored, k), np.flip(stored_tumour, k)
        new_affine[axis, k] = -affine[axis, axis] if flip else affine[axis, axis]
        new_affine[axis, 3] = affine[axis, axis] * (length - 1) if flip else 0.0
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored, np.float32), new_affine), path)
    return np.ascontiguousarray(stored_tumour)


# Per plane: the display slices' shape (slices, rows, columns) of the 20 x 24 x 10 RAS volume, the tumour's
# slices, its largest cross-section in mm^2 (2 x 1 x 3 mm voxels), and the name of slice 3.
PLANE_VIEWS = {
    "axial": ((10, 24, 20), 3, 4 * 4 * 2 * 1, "{}@3"),
    "coronal": ((24, 10, 20), 4, 4 * 3 * 2 * 3, "{}@coronal:3"),
    "sagittal": ((20, 10, 24), 4, 4 * 3 * 1 * 3, "{}@sagittal:3"),
}


@pytest.mark.parametrize(
    ("permutation", "flips"),
    list(itertools.product(itertools.permutations(range(3)), [(False, False, False), (True, False, True)])),
)
@pytest.mark.parametrize("plane", list(PLANE_VIEWS))
def test_a_mask_predicted_on_display_slices_lands_on_the_tumour_in_the_input_s_own_voxels(
    tmp_path, permutation, flips, plane
):
    path = tmp_path / "scan.nii.gz"
    truth = synthetic_scan(path, permutation, flips)
    slices = read_volume(path, plane)  # what the models see
    shape, tumour_slices, cross_section_mm2, third = PLANE_VIEWS[plane]
    assert slices.shape == shape  # whatever the stored order
    predicted = [display > 150 for display in slices]  # a perfect "segmenter" of the bright tumour
    image = mask_volume(path, predicted, plane)
    assert image.shape == truth.shape and np.array_equal(image.affine, nib.load(path).affine)
    assert image.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(image.dataobj), truth)
    summary = scan_summary(path, predicted, plane)
    assert summary["slices"] == shape[0] and summary["tumor_slices"] == tumour_slices
    assert summary["tumor_volume_ml"] == pytest.approx(4 * 4 * 3 * 2 * 1 * 3 / 1000)  # voxels x 6 mm^3
    assert summary["largest_cross_section_mm2"] == cross_section_mm2
    assert scan_slices(path, plane)[3] == third.format(path)


def test_each_plane_is_shown_as_radiologists_see_it(tmp_path):
    # A marker at the patient's right, anterior, superior corner of the head (RAS voxel x high, y high, z high).
    volume = np.zeros((20, 24, 10), np.float32)
    volume[18, 22, 8] = 1
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 1.0, 3.0, 1.0])), tmp_path / "scan.nii.gz")
    corner = {plane: np.argwhere(read_volume(tmp_path / "scan.nii.gz", plane))[0] for plane in PLANE_VIEWS}
    # axial: anterior up (row 1 of 24), the patient's right on the left (column 1 of 20)
    assert corner["axial"].tolist() == [8, 1, 1]
    # coronal: superior up (row 1 of 10), the patient's right on the left (column 1 of 20)
    assert corner["coronal"].tolist() == [22, 1, 1]
    # sagittal: superior up (row 1 of 10), anterior on the left (column 1 of 24)
    assert corner["sagittal"].tolist() == [18, 1, 1]


def test_the_window_puts_the_head_s_median_at_the_training_slices_gray_with_or_without_the_skull():
    rng = np.random.default_rng(0)
    brain = rng.normal(1.0, 0.2, (6, 40, 40))  # z-scored, as BraTS ships it
    air = np.zeros(brain.shape, bool)
    air[:, :4] = True  # a band of air, black in any window
    stripped = np.where(air, brain.min() - 1, brain)
    with_skull = np.where(air, 0.0, 400 + 300 * brain)  # another scanner's units, a bright rim of scalp fat
    with_skull[:, 4:8] = 2000
    for volume in (stripped, with_skull):
        out = window_to_uint8(volume, ~air)
        assert np.median(out[~air]) == pytest.approx(HEAD_GRAY, abs=1) and (out[air] == 0).all()
        assert np.percentile(out[~air], 0.4) == 0  # the head's darkest half percent black
    # linear in the units: 16-bit or float, the same brain gives the same slice
    assert np.array_equal(window_to_uint8(stripped, ~air), window_to_uint8(3 * stripped + 7, ~air))


@pytest.mark.slow  # predict.py in a process of its own, with a trained segmenter
def test_predict_writes_a_scan_s_mask_volume_and_its_row(trained_segmenter, tmp_path):
    from tests.conftest import run_script

    path = tmp_path / "scan.nii.gz"
    truth = synthetic_scan(path, (1, 2, 0), (True, False, False))
    result = run_script(
        "predict.py", "--seg_ckpt", str(trained_segmenter), "--output_dir", "out", str(path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    mask = nib.load(tmp_path / "out" / "scan_mask.nii.gz")
    assert mask.shape == truth.shape and np.array_equal(mask.affine, nib.load(path).affine)
    with open(tmp_path / "out" / "scans.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["scan"] == str(path) and row["slices"] == "10"
    assert int(row["tumor_slices"]) == int(np.count_nonzero(np.asarray(mask.dataobj).sum(axis=(0, 2))))
    assert (tmp_path / "out" / row["montage_file"]).is_file()


@pytest.mark.slow  # two processes of predict.py, as Lightning launches them
def test_scans_spread_over_two_processes_are_each_predicted_once_and_tabled_in_order(trained_segmenter, tmp_path):
    from tests.conftest import run_process

    scans = [tmp_path / f"scan{index}.nii.gz" for index in range(3)]
    for index, path in enumerate(scans):
        synthetic_scan(path, (0, 1, 2), (index == 1, False, False))
    arguments = ["--seg_ckpt", str(trained_segmenter), "--device", "cpu", "--devices", "2", "--strategy", "ddp"]
    result = run_process("predict.py", *arguments, "--output_dir", "out", *map(str, scans), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "out" / "scans.csv") as handle:
        assert [row["scan"] for row in csv.DictReader(handle)] == list(map(str, scans))
    with open(tmp_path / "out" / "predictions.csv") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == [name for s in scans for name in scan_slices(s)]
    assert all((tmp_path / "out" / f"scan{index}_mask.nii.gz").is_file() for index in range(3))


def test_a_montage_shows_the_slices_with_tumour_outlined():
    from inference.scans import montage

    slices = [np.full((8, 10), 50, np.uint8) for _ in range(6)]
    masks = [np.zeros((8, 10), np.uint8) for _ in range(6)]
    for index in (1, 2, 4):
        masks[index][2:6, 3:7] = 1
    picture = montage(slices, masks, columns=2)
    assert picture.shape == (2 * 8, 2 * 10, 3)  # three tiles and a blank one, two a row
    assert (picture[8:, 10:] == 0).all() and (picture[:8, :10, 0] > picture[:8, :10, 2]).any()  # red outline
    assert montage(slices, [np.zeros((8, 10), np.uint8)] * 6).shape == (8, 10, 3)  # no tumour: the middle slice


class SlicesAsGiven:
    """A stand-in for TumorPredictor with no model: each slice's prediction is its name alone."""

    classifier = segmenter = None
    device = None

    def predict_files(self, paths, batch_size, gradcam, tta):
        return (Prediction(str(path)) for path in paths)


def test_scans_go_through_lightning_s_predict_loop_and_a_bad_one_is_one_error_the_others_predicted(tmp_path):
    from inference.scan_prediction import ScanPredictor, predict_scans

    good = tmp_path / "good.nii.gz"
    synthetic_scan(good, (0, 1, 2), (False, False, False))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:200])
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), flat)
    scans = [str(cut), str(good), str(flat)]
    (tmp_path / ".scan_parts").mkdir()  # left by a run of three processes that died
    (tmp_path / ".scan_parts" / "process_2.jsonl").write_text('{"index": 0}\n')
    results = predict_scans(ScanPredictor(SlicesAsGiven()), scans, tmp_path, accelerator="cpu", devices=1)
    assert [result["index"] for result in results] == [0, 1, 2]  # in the order given
    assert [len(result["errors"]) for result in results] == [1, 0, 1]
    assert results[0]["errors"][0].startswith(f"{cut}: not a readable NIfTI volume")
    assert results[2]["errors"] == [f"{flat}: a 2D image; expected a 3D volume"]
    assert [row["file"] for row in results[1]["slice_rows"]] == scan_slices(good)
    assert results[1]["scan_row"] == {"scan": str(good), "slices": 10} and results[0]["scan_row"] is None
    assert not (tmp_path / ".scan_parts").exists()  # the processes' part files merged and gone


def test_a_scan_is_scored_as_one_volume_in_millimetres():
    from evaluation.scans import ScanMasks, format_scans_report, scan_scores, scans_report

    truth = np.zeros((6, 10, 10), bool)
    truth[2:4, 2:6, 2:6] = True  # 32 voxels over 2 slices
    predicted = np.roll(truth, 1, axis=2)  # one column to the right: 24 voxels overlap
    predicted[5, 0, 0] = True  # and a speck on a healthy slice
    row = scan_scores(ScanMasks("scan", predicted, truth, (2.0, 1.0, 0.5)))
    report = scans_report([row, scan_scores(ScanMasks("healthy", predicted * 0, truth * 0, (1, 1, 1)))], 0.7, 0.05)
    assert (report["scans_reaching_the_dice_goal"], report["scans_with_volume_within_the_goal"]) == (1, 1)
    assert "n/a" in format_scans_report(report).splitlines()[-1]  # no Dice without tumour in either
    assert row["dice"] == pytest.approx(2 * 24 / (33 + 32))
    assert row["true_volume_ml"] == pytest.approx(32 * 1.0 / 1000) and row["predicted_volume_ml"] == 0.033
    assert row["volume_error"] == pytest.approx(1 / 32)
    assert (row["tumour_slices"], row["tumour_slices_found"], row["healthy_slices_given_a_tumour"]) == (2, 2, 1)
    # Without the speck: a shift by one voxel is that axis's spacing, in mm.
    from evaluation.scans import hausdorff_95_mm

    assert hausdorff_95_mm(np.roll(truth, 1, axis=2), truth, (2.0, 1.0, 0.5)) == pytest.approx(0.5)
    assert hausdorff_95_mm(np.roll(truth, 1, axis=0), truth, (2.0, 1.0, 0.5)) == pytest.approx(2.0)
    assert hausdorff_95_mm(np.zeros_like(truth), truth, (2.0, 1.0, 0.5)) is None


def test_evaluate_stacks_a_scan_s_slices_on_the_model_s_grid(tmp_path):
    from tests.conftest import script_module

    path = tmp_path / "scan.nii.gz"
    synthetic_scan(path, (0, 1, 2), (False, False, False))  # 20 x 24 x 10 voxels of 2 x 1 x 3 mm
    mask = np.zeros((32, 32), bool)
    stacked = script_module("evaluate.py").stacked_scan(str(path), {3: (mask, mask), 5: (~mask, mask)})
    assert stacked.predicted.shape == (3, 32, 32) and not stacked.predicted[1].any()  # slice 4: not scored, empty
    assert stacked.spacing_mm == pytest.approx((3.0, 1.0 * 24 / 32, 2.0 * 20 / 32))


def test_a_scan_s_tumour_type_is_the_mean_over_its_slices_with_tumour():
    from inference.scans import mean_probabilities, scan_classification

    def slice_probabilities(glioma, meningioma, no_tumor, pituitary):
        return dict(glioma=glioma, meningioma=meningioma, no_tumor=no_tumor, pituitary=pituitary)

    probabilities = [slice_probabilities(0.1, 0.1, 0.7, 0.1), slice_probabilities(0.5, 0.4, 0.0, 0.1),
                     slice_probabilities(0.2, 0.7, 0.0, 0.1)]  # fmt: skip
    row = scan_classification(probabilities, [False, True, True], [True, False, False])
    assert row == {"tumor_type": "meningioma", "tumor_type_probability": 0.55, "slices_unlike_training_data": 1}
    assert scan_classification(probabilities, [False] * 3, [False] * 3)["tumor_type"] == ""
    # the page's probabilities: over the slices with tumour, else over every slice
    assert mean_probabilities(probabilities, [False, True, True])["glioma"] == pytest.approx(0.35)
    assert mean_probabilities(probabilities, [False] * 3)["no_tumor"] == pytest.approx(0.7 / 3)
