"""The evaluation layer: bootstrap intervals, reports from predictions, and evaluate.py on a folder
that holds copies of the training images."""

from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.labels import CLASS_NAMES, NO_TUMOR_CLASS
from common.metrics import calibration_error
from evaluation.bootstrap import bootstrap_intervals
from evaluation.calibration import auroc_per_class, roc_and_pr_figure
from evaluation.classification import (
    ClassPredictions,
    classification_report,
    distinct_image_accuracy,
    errors_figure,
    most_confident_errors,
)
from lightning_modules import ClassificationModule, SegmentationModule
from lightning_modules.calibration import TEMPERATURE_RANGE, fit_temperature
from lightning_modules.familiarity import fit_class_gaussians, mahalanobis_to_nearest_class
from tests.conftest import evaluate_report, synthetic_slice


def predictions_with_accuracy(size: int, accuracy: float, seed: int = 0) -> ClassPredictions:
    """`size` images, a share `accuracy` of them predicted right, the rest as the next class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size)
    right = np.arange(size) < round(accuracy * size)
    predicted = np.where(right, labels, (labels + 1) % 4)
    return ClassPredictions([f"{i}.png" for i in range(size)], labels, np.eye(4)[predicted] * 0.9 + 0.025)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images():
    small = classification_report(predictions_with_accuracy(40, 0.75), CLASS_NAMES, NO_TUMOR_CLASS, seed=1)
    large = classification_report(predictions_with_accuracy(4000, 0.75), CLASS_NAMES, NO_TUMOR_CLASS, seed=1)
    for report in (small, large):
        low, high = report["accuracy"]["ci95"]
        assert report["accuracy"]["value"] == pytest.approx(0.75) and low < 0.75 < high
    width = {name: r["accuracy"]["ci95"][1] - r["accuracy"]["ci95"][0] for name, r in (("s", small), ("l", large))}
    assert width["l"] < width["s"] / 5  # 100x the images: about a tenth of the width (1 / sqrt(n))
    # A binomial accuracy's 95% interval is about +-1.96 sqrt(p(1-p)/n): 0.027 for 4000 images.
    assert width["l"] == pytest.approx(2 * 1.96 * np.sqrt(0.75 * 0.25 / 4000), rel=0.15)


def test_bootstrap_is_seeded():
    statistic = {"mean": lambda indices: float(np.arange(100)[indices].mean())}
    assert bootstrap_intervals(statistic, 100, seed=3) == bootstrap_intervals(statistic, 100, seed=3)
    assert bootstrap_intervals(statistic, 100, seed=3) != bootstrap_intervals(statistic, 100, seed=4)


def test_report_of_a_perfect_classifier():
    labels = np.array([0, 1, 2, 3] * 5)
    report = classification_report(
        ClassPredictions([""] * 20, labels, np.eye(4)[labels]), CLASS_NAMES, NO_TUMOR_CLASS, resamples=100
    )
    assert report["accuracy"] == {"value": 1.0, "ci95": [1.0, 1.0]}
    assert report["per_class"]["glioma"]["recall"]["value"] == 1.0 and report["per_class"]["glioma"]["support"] == 5
    assert report["confusion_matrix"] == (np.eye(4, dtype=int) * 5).tolist()


def test_evaluating_a_folder_leaves_out_copies_of_training_images(trained_classifier, tmp_path):
    training = trained_classifier.parents[4] / "data" / "Training"
    external = tmp_path / "external"
    rng = np.random.default_rng(123)
    for label, folder in enumerate(CLASS_NAMES):  # the other dataset's folder names: no_tumor is fine too
        (external / folder).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(external / folder / f"new{i}.png"), synthetic_slice(rng, label))
    seen = sorted((training / "glioma_tumor").glob("*.png"))[:2]
    shutil.copy(seen[0], external / "glioma" / "exact.png")
    cv2.imwrite(str(external / "glioma" / "reencoded.jpg"), cv2.imread(str(seen[1])), [cv2.IMWRITE_JPEG_QUALITY, 85])

    metrics = evaluate_report(trained_classifier, tmp_path, "--data_root", str(external))
    assert metrics["copies_of_training_images"] == {"exact copy": 1, "near copy": 1}
    assert metrics["all_images"]["num_images"] == 14 and metrics["unseen_images"]["num_images"] == 12
    flags = {row["file"].rsplit("/", 1)[-1]: row["copy_of_training_image"] for row in metrics["per_image"]}
    assert flags.pop("exact.png") == "exact copy" and flags.pop("reencoded.jpg") == "near copy"
    assert set(flags.values()) == {None}


def test_several_folders_are_also_scored_one_by_one(trained_classifier, tmp_path):
    rng = np.random.default_rng(7)
    for name, per_class in (("first", 3), ("second", 2)):
        for label, folder in enumerate(CLASS_NAMES):
            (tmp_path / name / folder).mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(tmp_path / name / folder / f"{i}.png"), synthetic_slice(rng, label))
    roots = [str(tmp_path / "first"), str(tmp_path / "second")]
    metrics = evaluate_report(trained_classifier, tmp_path, "--data_root", *roots)
    assert {root: row["num_images"] for root, row in metrics["per_source"].items()} == {roots[0]: 12, roots[1]: 8}
    for root, row in metrics["per_source"].items():  # each row: the accuracy of its own images alone
        mine = [image for image in metrics["per_image"] if image["file"].startswith(root + "/")]
        assert row["accuracy"]["value"] == pytest.approx(np.mean([i["label"] == i["predicted"] for i in mine]))


def test_temperature_scaling_undoes_overconfidence_and_lowers_the_nll():
    torch.manual_seed(0)
    true_logits = torch.randn(2000, 4)
    labels = torch.distributions.Categorical(logits=true_logits).sample()  # labels as the true model expects them
    overconfident = 4 * true_logits  # the same ranking, four times too sure
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4, rel=0.15)

    def nll(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits, labels))

    assert nll(overconfident / temperature) < nll(overconfident) - 0.3
    before = calibration_error(overconfident.softmax(dim=1), labels)
    after = calibration_error((overconfident / temperature).softmax(dim=1), labels)
    assert after < before / 3


def test_temperature_stays_bounded_on_a_validation_set_without_errors():
    labels = torch.tensor([0, 1, 2, 3] * 4)
    separable = 3 * torch.eye(4)[labels]  # every image right: the likelihood rises as T falls to 0
    assert fit_temperature(separable, labels) == TEMPERATURE_RANGE[0]


def test_mahalanobis_distance_to_the_nearest_class_is_exact():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [10.0, 10.0], [12.0, 10.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    means, precision = fit_class_gaussians(features, labels, num_classes=3, shrinkage=0.0)
    assert means[:2].tolist() == [[1.0, 1.0], [11.0, 10.0]] and torch.isinf(means[2]).all()  # class 2: no images
    # residuals: (+-1, +-1) four times and (+-1, 0) twice; divided by 6 images - 2 classes
    covariance = torch.tensor([[6.0, 0.0], [0.0, 4.0]]) / 4
    assert torch.allclose(precision, torch.linalg.inv(covariance))
    point = torch.tensor([[1.0, 3.0], [11.0, 10.0]])  # (0, 2) from class 0; class 1's own mean
    assert torch.allclose(mahalanobis_to_nearest_class(point, means, precision), torch.tensor([4.0 / 1.0, 0.0]))


def test_familiarity_flags_noise_and_blank_images_but_few_new_slices():
    """A tiny classifier trained for a moment on generated slices already tells them from noise."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def slices(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.integers(0, 4, count)
        images = np.stack([synthetic_slice(rng, int(label), 32) for label in labels]).astype(np.float32) / 255
        return torch.from_numpy((images - 0.5) / 0.25)[:, None], torch.from_numpy(labels)

    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]})
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    for _ in range(60):
        images, labels = slices(32)
        loss = F.cross_entropy(module(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        validation, labels = slices(200)
        _, pooled = module.forward_with_features(validation)
        means, precision = fit_class_gaussians(pooled, labels, len(CLASS_NAMES))
        module.feature_means.copy_(means)
        module.feature_precision.copy_(precision)
        module.unfamiliar_threshold.fill_(torch.quantile(module.unfamiliarity(pooled), 0.95))

        def flagged(images: torch.Tensor) -> float:
            return float(module.is_unfamiliar(module.forward_with_features(images)[1]).float().mean())

        noise = torch.from_numpy((rng.random((50, 1, 32, 32)).astype(np.float32) - 0.5) / 0.25)
        assert flagged(noise) >= 0.9
        assert flagged(torch.full((10, 1, 32, 32), -2.0)) >= 0.9  # a black image
        assert flagged(slices(200)[0]) <= 0.2  # new slices like the validation ones: about 5%


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/device_outlines.sh check)")
def test_fitted_post_processing_takes_cpu_outputs_of_a_model_on_the_gpu():
    """evaluate.py runs the network on the GPU and gathers its outputs on the CPU; the fitted thresholds,
    temperature and familiarity model are buffers on the GPU then (a GPU run of evaluate.py crashed here)."""
    torch.manual_seed(0)
    segmenter = SegmentationModule(encoder_name="resnet18", encoder_weights=None, min_tumor_area=5).eval()
    segmenter.threshold.fill_(0.6)
    segmenter.detection_threshold.fill_(0.4)
    segmenter.tumor_area_threshold.fill_(20)
    logits = torch.randn(4, 1, 32, 32) * 2
    masks = segmenter.tumor_masks(logits)
    assert masks.any()
    assert torch.equal(segmenter.cuda().tumor_masks(logits), masks)

    classifier = ClassificationModule(model_kwargs={"width": 8, "depths": [1]}).eval()
    features = classifier.feature_means.shape[1]
    classifier.temperature.fill_(2.0)
    classifier.feature_means.copy_(torch.randn(len(CLASS_NAMES), features))
    classifier.feature_precision.copy_(torch.eye(features))
    logits, pooled = torch.randn(8, len(CLASS_NAMES)), torch.randn(8, features)
    classifier.unfamiliar_threshold.fill_(classifier.unfamiliarity(pooled).median())
    on_cpu = classifier.probabilities(logits), classifier.unfamiliarity(pooled), classifier.is_unfamiliar(pooled)
    on_gpu = classifier.cuda().probabilities(logits), classifier.unfamiliarity(pooled), classifier.is_unfamiliar(pooled)
    for expected, actual in zip(on_cpu, on_gpu):
        assert actual.device.type == "cpu"
        assert torch.allclose(actual.float(), expected.float())


def test_auroc_of_a_class_without_images_is_undefined_and_raises_no_warning():
    probabilities = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1]])
    labels = torch.tensor([0, 1, 1])  # no no_tumor, no pituitary image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aurocs = auroc_per_class(probabilities, labels, CLASS_NAMES)
        roc_and_pr_figure(probabilities, labels, CLASS_NAMES)
    assert aurocs == {"glioma": 1.0, "meningioma": 1.0, "no_tumor": None, "pituitary": None}


def test_boundary_distances_of_a_shifted_mask_and_of_empty_ones():
    from evaluation.segmentation import boundary_distances

    truth = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    truth[:, :, 10:30, 10:30] = True
    predicted = torch.zeros_like(truth)
    predicted[0, :, 10:30, 13:33] = True  # the same square, 3 px to the right
    predicted[1] = truth[1]
    distances = boundary_distances(predicted, truth)  # image 2: nothing predicted
    assert distances[0, 0] == pytest.approx(3.0) and distances[1].tolist() == [0.0, 0.0]
    assert np.isnan(distances[2]).all()


def test_pixel_precision_and_recall_are_means_over_tumour_slices():
    from evaluation.segmentation import format_segmentation_report, segmentation_report

    # [tp, fp, tn, fn, support]: a mask that spills over (3 of 4 predicted pixels right, half the tumour),
    # a tumour slice given nothing, and a healthy slice given a tumour (which neither score counts)
    stats = torch.tensor([[3, 1, 90, 3, 6], [0, 0, 96, 4, 4], [0, 5, 95, 0, 0]])
    report = segmentation_report(stats, ["a.png", "b.png", "c.png"], resamples=20)
    assert report["precision_per_tumor_image"]["value"] == pytest.approx((3 / 4 + 0) / 2)
    assert report["recall_per_tumor_image"]["value"] == pytest.approx((3 / 6 + 0) / 2)
    assert "pixels per tumor image:  precision 0.375" in format_segmentation_report(report, "three")


def test_the_misclassified_images_are_shown_most_confidently_wrong_first_and_only_among_those_scored():
    def row(label: str, predicted: str, probability: float) -> dict:
        others = {name: (1 - probability) / 3 for name in CLASS_NAMES if name != predicted}
        return {
            "file": f"x/{label}.png",
            "label": label,
            "predicted": predicted,
            "correct": label == predicted,
            "probabilities": {**others, predicted: probability},
        }

    per_image = [
        row("glioma", "pituitary", 0.6),
        row("glioma", "glioma", 0.99),
        row("meningioma", "no_tumor", 0.9),  # the most confident error, but not scored (a copy of a training image)
        row("pituitary", "no_tumor", 0.8),
        row("no_tumor", "meningioma", 0.7),
    ]
    assert most_confident_errors(per_image, among=[0, 1, 3, 4]) == [3, 4, 0]
    assert most_confident_errors(per_image, among=[0, 1, 3, 4], count=2) == [3, 4]
    figure = errors_figure([per_image[i] for i in (3, 4, 0)], [np.zeros((8, 8), np.uint8)] * 3)
    assert [axis.get_title() for axis in figure.axes] == [
        "pituitary -> no_tumor 80%\npituitary.png",
        "no_tumor -> meningioma 70%\nno_tumor.png",
        "glioma -> pituitary 60%\nglioma.png",
    ]


def test_accuracy_over_distinct_images_counts_a_group_of_copies_once_and_right_only_when_all_are():
    right = np.array([True, False, True, True, True, False])
    groups = np.array([7, 7, 3, 5, 5, 9])  # copies share a group id
    result = distinct_image_accuracy(right, groups, resamples=200)
    assert (result["num_groups"], result["num_images"]) == (4, 6)
    assert result["accuracy"]["value"] == pytest.approx(2 / 4)  # groups 3 and 5 right; 7 (one copy wrong) and 9 not
