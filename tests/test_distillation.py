"""Knowledge distillation: the loss's formula, the teachers' averaged probabilities, the share of the
loss that is theirs, and the guard against teachers of another validation split."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from common.errors import ConfigError
from datamodules.classification import ClassificationDataModule
from lightning_modules.checkpoints import saved_arguments
from lightning_modules.classification import ClassificationModule
from lightning_modules.distillation import Teachers, distillation_loss
from lightning_modules.trained_model import TrainedModel

TINY_NET = {"width": 8, "depths": [1, 1]}


def teacher(image_size: int = 32, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    module = ClassificationModule(model_kwargs=TINY_NET).eval()
    return TrainedModel(module, image_size, 1, f"teacher{seed}.ckpt")


def test_the_loss_is_the_squared_temperature_times_the_kl_divergence():
    uniform_student = torch.zeros(1, 2)
    certain_teacher = torch.tensor([[1.0, 0.0]])
    # KL([1, 0] || [1/2, 1/2]) = log 2, times T^2 = 4
    assert distillation_loss(uniform_student, certain_teacher, 2.0).item() == pytest.approx(4 * math.log(2))
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert distillation_loss(logits, (logits / 3).softmax(dim=1), 3.0).item() == pytest.approx(0, abs=1e-6)


def test_teachers_average_their_probabilities_each_at_its_own_image_size():
    first, second, larger = teacher(seed=0), teacher(seed=1), teacher(image_size=48, seed=2)
    images = torch.randn(3, 1, 32, 32)
    expected = (
        sum(
            (model.module(model_images).detach() / 2).softmax(dim=1)
            for model, model_images in (
                (first, images),
                (second, images),
                (larger, F.interpolate(images, size=(48, 48), mode="bilinear", antialias=True)),
            )
        )
        / 3
    )
    seen = []
    larger.module.net.register_forward_pre_hook(lambda net, inputs: seen.append(inputs[0].shape[-2:]))
    assert torch.allclose(Teachers([first, second, larger]).probabilities(images, 2.0), expected, atol=1e-6)
    assert seen == [torch.Size([48, 48])]


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_the_distillation_weight_shares_the_loss_between_labels_and_teachers(weight):
    student = ClassificationModule(model_kwargs=TINY_NET, distillation_weight=weight, label_smoothing=0.0).eval()
    student.log = lambda *args, **kwargs: None  # no Trainer to log to
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    label_loss = F.cross_entropy(student(images), labels)
    # a teacher with the student's own weights: its probabilities are the student's, so their KL is 0
    twin = ClassificationModule(model_kwargs=TINY_NET).eval()
    twin.load_state_dict(student.state_dict())
    student._teachers = Teachers([TrainedModel(twin, 32, 1, "twin.ckpt")])
    loss = student.training_step((images, labels), 0)
    assert loss.item() == pytest.approx((1 - weight) * label_loss.item(), abs=1e-5)


def test_a_teacher_of_another_split_or_other_images_is_refused_in_one_line(trained_classifier, tmp_path):
    trained = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu"))
    teachers = Teachers([trained])
    same = trained.datamodule()
    same.setup("fit")
    teachers.check_same_split(same)  # the data and split it trained on: accepted

    arguments = saved_arguments(trained.data_hparams)
    other_seed = ClassificationDataModule(**{**arguments, "seed": 7})
    other_seed.setup("fit")
    with pytest.raises(ConfigError, match=r"teacher of another validation split: seed 42 \(this run: 7\)"):
        teachers.check_same_split(other_seed)

    other_images = ClassificationDataModule(**arguments)
    other_images.setup("fit")
    other_images.training_fingerprints.sha1 = other_images.training_fingerprints.sha1[1:]
    with pytest.raises(ConfigError, match="trained or validated on other images than this run's"):
        teachers.check_same_split(other_images)


def test_a_teacher_of_other_channels_names_the_file(trained_classifier):
    with pytest.raises(ConfigError, match=f"{trained_classifier}: a teacher of 1-channel images; this run reads 3"):
        Teachers.load([str(trained_classifier)], ClassificationModule, torch.device("cpu"), channels=3)


def test_a_fit_loads_its_teachers_and_learns_from_them(trained_classifier, tmp_path):
    trained = TrainedModel.load(trained_classifier, ClassificationModule, torch.device("cpu"))
    datamodule = trained.datamodule()
    student = ClassificationModule(model_kwargs=TINY_NET, teachers=[str(trained_classifier)])
    trainer = L.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(student, datamodule=datamodule)
    assert student._teachers.models[0].checkpoint == str(trained_classifier)
    assert trainer.callback_metrics["train/distillation_loss"] > 0
