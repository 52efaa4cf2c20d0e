"""Knowledge distillation (Hinton et al., 2015): a classifier also learns the softened class
probabilities of trained classifiers, its teachers, averaged over them when there are several, so
that an ensemble can be distilled into one network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.errors import ConfigError
from datamodules.base import CachedDataModule
from lightning_modules.trained_model import TrainedModel


def distillation_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the probabilities at `temperature`, times its square, which keeps
    the gradients' scale that of a temperature of 1 (Hinton et al.)."""
    log_probabilities = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_probabilities, teacher_probabilities, reduction="batchmean") * temperature**2


@dataclass
class Teachers:
    """Trained classifiers in eval mode. Not a torch module, so they stay out of the student's
    parameters, optimizer and checkpoints."""

    models: list[TrainedModel]

    @classmethod
    def load(cls, paths: list[str], module_class: type, device: torch.device, channels: int) -> Teachers:
        """Checkpoints, run folders or model files of `module_class` (the student's) that read images of
        `channels` channels."""
        models = [TrainedModel.load(path, module_class, device) for path in paths]
        for path, model in zip(paths, models):
            if model.channels != channels:
                raise ConfigError(f"{path}: a teacher of {model.channels}-channel images; this run reads {channels}")
            model.module.requires_grad_(False)
        return cls(models)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, temperature: float) -> torch.Tensor:
        """The teachers' mean class probabilities at `temperature` (their raw logits, not their calibration,
        which was fitted on validation), each teacher given the images at the size it was trained on."""
        mean = 0
        for model in self.models:
            size = model.image_size
            views = (
                images
                if images.shape[-1] == size
                else F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
            )
            mean = mean + (model.module(views).float() / temperature).softmax(dim=1)
        return mean / len(self.models)

    def check_same_split(self, datamodule: CachedDataModule) -> None:
        """Refuse teachers that trained on other images or another split: their probabilities could carry
        the labels of this run's validation images into its training. (So the images a teacher has seen
        are this run's own, and its checkpoint's fingerprints cover them.)"""
        for model in self.models:
            if difference := model.split_difference(datamodule):
                raise ConfigError(f"{model.checkpoint}: a teacher {difference}; train it on this run's data and split")
