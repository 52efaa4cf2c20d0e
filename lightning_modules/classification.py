"""LightningModule for 4-class brain-tumor classification."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.data import Mixup
from torchmetrics import MeanMetric

from common.errors import check_range
from common.labels import CLASS_NAMES, NO_TUMOR_CLASS
from common.metrics import calibration_error, classification_metrics
from common.visualization import confusion_matrix_figure
from lightning_modules.base import TaskModule
from lightning_modules.calibration import fit_temperature
from lightning_modules.distillation import Teachers, distillation_loss
from lightning_modules.familiarity import fit_class_gaussians, mahalanobis_to_nearest_class
from lightning_modules.losses import mixed_partial_label_loss, partial_label_loss
from lightning_modules.models import check_pretrained_source, create_classifier, mean_of_logits
from lightning_modules.pretrained import load_classifier_weights
from lightning_modules.tta import run_with_tta

UNFAMILIAR_VALIDATION_SHARE = 0.05  # of validation images called unlike the training data


class BlendShareMixup(Mixup):
    """timm's Mixup (batch mode: image i blended with image N-1-i), returning the blend's share of each
    image's own label instead of blended one-hot targets, which cannot hold a label that allows several
    classes (common.labels). timm has no public call that mixes the images alone, hence `_mix_batch`."""

    def mix(self, images: torch.Tensor) -> float:
        """Blend `images` in place; the share of each image that is its own."""
        return float(self._mix_batch(images))


class ClassificationModule(TaskModule):
    """Classifier for glioma / meningioma / no tumor / pituitary MRI slices.

    Args:
        model: "residual_cnn" (trained from scratch) or any timm model name.
        in_channels: image channels; train.py links it to the datamodule's `channels`.
        pretrained: start a timm model from ImageNet weights (downloaded from the hub when training starts).
        weights_path: local pretrained weights for a timm model, for offline machines (read when training starts;
            a trained checkpoint no longer needs the file).
        model_kwargs: extra constructor arguments, e.g. {width: 32, depths: [1, 2, 2, 2]}.
        members: trained classifiers (checkpoints, run folders or model files of `model`, `model_kwargs` and
            `in_channels`; `FILE#K`: member K of an ensemble file) whose ensemble this module is: its logits
            are the mean of theirs (models.MeanOfLogits) and its familiarity model reads their pooled
            features side by side. Each is refused if it saw some of this run's images without having this
            run's data and split; the images they saw count as seen in evaluate.py. scripts/recalibrate.py
            fits the ensemble's temperature and familiarity model (README, "An ensemble of models").
            `pretrained` and `weights_path` are then not read.
        member_networks: for members of different architectures, each one's own `model` and `model_kwargs`
            (one mapping per member, in order; scripts/recalibrate.py records them); unset, every member is
            `model` with `model_kwargs`.
        label_smoothing: cross-entropy label smoothing. Labels may allow several classes (a tumour of unknown
            type, common.labels); the loss is then the partial-label loss (lightning_modules.losses).
        mixup_alpha: Beta(alpha, alpha) mixing of image pairs and their labels (timm's Mixup); 0 turns it off.
        cutmix_alpha: the same for pasting a box of one image into another; 0 turns it off.
        mix_prob: fraction of training batches that are mixed (mixup or cutmix, half each when both are on).
        teachers: classifier checkpoints, run folders or model files trained on this run's data and split
            (checked when training starts): the network also learns their mean class probabilities at
            `distillation_temperature` (knowledge distillation; several teachers distil an ensemble).
        distillation_weight: share of the loss that is the teachers' (the rest is the labels').
        distillation_temperature: softens the teachers' and the network's probabilities in that loss.
        **kwargs: optimizer and schedule options of `TaskModule`.
    """

    class_names = CLASS_NAMES
    run_name = "cls"
    checkpoint_monitor = "val/acc"
    fitted_buffers = ("temperature", "feature_means", "feature_precision", "unfamiliar_threshold")
    network_arguments = ("model", "model_kwargs")

    def __init__(
        self,
        model: str = "residual_cnn",
        in_channels: int = 1,
        pretrained: bool = False,
        weights_path: str | None = None,
        model_kwargs: dict | None = None,
        members: list[str] | None = None,
        member_networks: list[dict] | None = None,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        teachers: list[str] | None = None,
        distillation_weight: float = 0.9,
        distillation_temperature: float = 4.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        check_range("mixup_alpha", mixup_alpha, 0)
        check_range("cutmix_alpha", cutmix_alpha, 0)
        check_range("mix_prob", mix_prob, 0, 1)
        check_range("distillation_weight", distillation_weight, 0, 1)
        check_range("distillation_temperature", distillation_temperature, 0, low_open=True)
        num_classes = len(CLASS_NAMES)
        check_pretrained_source(model, pretrained, weights_path)
        networks = [  # one per member, or one
            create_classifier(arguments["model"], num_classes, in_channels, **(arguments["model_kwargs"] or {}))
            for arguments in self.member_arguments()
        ]
        self.net = mean_of_logits(networks)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = BlendShareMixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=1.0,  # training_step draws which batches mix, so it knows which ones did
                num_classes=num_classes,
            )
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        # Validation slices known to hold a tumour of unknown type: the share called any tumour.
        self.val_tumor_found = MeanMetric()
        # Divides the logits before the softmax wherever probabilities are shown (predict.py, the web page,
        # evaluate.py); fitted on each epoch's validation logits, so every checkpoint has its own.
        self.register_buffer("temperature", torch.ones(()))
        # "Unlike the training data": the Mahalanobis distance of the pooled features to the nearest class
        # (evaluation/familiarity.py), fitted on each epoch's validation features; distances above the
        # threshold (exceeded by 5% of the validation images) are flagged.
        features = getattr(self.net, "head_hidden_size", None) or self.net.num_features
        self.register_buffer("feature_means", torch.zeros(num_classes, features))
        self.register_buffer("feature_precision", torch.zeros(features, features))
        self.register_buffer("unfamiliar_threshold", torch.tensor(float("inf")))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._teachers: Teachers | None = None  # loaded when training starts or resumes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: the softmax of the logits over the fitted temperature."""
        return (logits.float() / self.fitted("temperature", logits)).softmax(dim=1)

    def classify(self, images: torch.Tensor, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits averaged over the views of `tta` (lightning_modules.tta), and the pooled features of the
        image as it is (what the familiarity score reads): the unflipped view's pass gives both."""
        logits, pooled = self.forward_with_features(images)
        return run_with_tta(self, images, tta, unflipped=logits), pooled

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled features the head classifies (timm's pre-logits)."""
        features = self.net.forward_features(images)
        return self.net.forward_head(features), self.net.forward_head(features, pre_logits=True)

    def unfamiliarity(self, pooled: torch.Tensor) -> torch.Tensor:
        """How unlike the validation images' features these pooled features are: higher for inputs
        less like the training data, whichever class they are closest to."""
        return mahalanobis_to_nearest_class(
            pooled, self.fitted("feature_means", pooled), self.fitted("feature_precision", pooled)
        )

    def is_unfamiliar(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.unfamiliarity(pooled) > self.fitted("unfamiliar_threshold", pooled)

    @staticmethod
    def network_of(hparams: Mapping) -> str:
        arguments = dict(sorted((hparams["model_kwargs"] or {}).items()))  # in any order, the same network
        return f"a {hparams['model']} {arguments} of {hparams['in_channels']}-channel images"

    def load_pretrained_weights(self) -> None:
        hp = self.hparams
        if hp.members:
            self.load_trained_weights(hp.members, getattr(self._trainer, "datamodule", None))
        elif hp.pretrained or hp.weights_path:
            load_classifier_weights(self.net, hp.model, hp.pretrained, hp.weights_path)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.teachers:
            self._teachers = Teachers.load(self.hparams.teachers, type(self), self.device, self.hparams.in_channels)
            self._teachers.check_same_split(self.trainer.datamodule)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of an unblended batch (label-smoothed cross-entropy, or its partial-label form)."""
        return partial_label_loss(logits, labels, self.hparams.label_smoothing).mean()

    def _mixes(self, images: torch.Tensor) -> bool:
        # timm's Mixup pairs images, so an odd batch stays unmixed
        return self.mixup is not None and len(images) % 2 == 0 and float(torch.rand(())) < self.hparams.mix_prob

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self._mixes(images):
            share = self.mixup.mix(images)
            logits = self(images)
            loss = mixed_partial_label_loss(logits, labels, labels.flip(0), share, self.hparams.label_smoothing)
        else:
            logits = self(images)
            loss = self.loss(logits, labels)
            # Only here: on a blended image, neither of the two labels is "the" right answer.
            known = labels < len(CLASS_NAMES)
            if known.any():
                right = (logits[known].argmax(dim=1) == labels[known]).float().mean()
                self.log("train/acc", right, on_step=True, on_epoch=True, prog_bar=True)
        if self._teachers is not None:  # the teachers see the same (mixed) images
            hp = self.hparams
            teacher_probabilities = self._teachers.probabilities(images, hp.distillation_temperature)
            distillation = distillation_loss(logits, teacher_probabilities, hp.distillation_temperature)
            self.log("train/distillation_loss", distillation, on_step=False, on_epoch=True)
            loss = (1 - hp.distillation_weight) * loss + hp.distillation_weight * distillation
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits, pooled = self.forward_with_features(images)
        self.log("val/loss", partial_label_loss(logits, labels).mean(), on_epoch=True, prog_bar=True)
        known = labels < len(CLASS_NAMES)  # the metrics and calibration need the class; the rest, a tumour
        if (~known).any():
            self.val_tumor_found.update((logits[~known].argmax(dim=1) != NO_TUMOR_CLASS).float())
        if known.any():
            self.val_metrics.update(logits[known], labels[known])
        self._val_outputs.append((logits[known].detach().float(), labels[known], pooled[known].detach().float()))

    def on_validation_epoch_end(self) -> None:
        values = {k.removeprefix("val/"): v for k, v in self.val_metrics.compute().items()}
        self.log("val/acc", values["acc"], prog_bar=True)
        scalars = {"val/acc_macro": values["acc_macro"]}
        for name in ("precision", "recall", "f1"):
            for c, class_name in enumerate(CLASS_NAMES):
                scalars[f"val/{name}_{class_name}"] = values[name][c]
        if self.val_tumor_found.update_count:
            scalars["val/tumor_found_unknown_type"] = self.val_tumor_found.compute()
            self.val_tumor_found.reset()
        self.log_dict(scalars)
        if not self.trainer.sanity_checking:
            self.log_figure("val/confusion_matrix", confusion_matrix_figure(values["confmat"], CLASS_NAMES))
            self._calibrate()
        self.val_metrics.reset()
        self._val_outputs.clear()

    def _calibrate(self) -> None:
        """Calibrate on this epoch's validation outputs (of every process)."""
        logits, labels, pooled = (self.all_gather(torch.cat(parts)) for parts in zip(*self._val_outputs))
        logits, labels = logits.reshape(-1, len(CLASS_NAMES)), labels.reshape(-1)
        self.calibrate(logits, labels, pooled.reshape(len(labels), pooled.shape[-1]))
        self.log_dict(
            {
                "val/temperature": self.temperature,
                "val/ece": calibration_error(logits.softmax(dim=1), labels),
                "val/ece_calibrated": calibration_error((logits / self.temperature).softmax(dim=1), labels),
            }
        )

    def calibrate(self, logits: torch.Tensor, labels: torch.Tensor, pooled: torch.Tensor) -> None:
        """Fit the temperature and the familiarity model (and its threshold) on validation outputs."""
        self.temperature.fill_(fit_temperature(logits, labels))
        means, precision = fit_class_gaussians(pooled, labels, len(CLASS_NAMES))
        self.feature_means.copy_(means)
        self.feature_precision.copy_(precision)
        self.unfamiliar_threshold.fill_(torch.quantile(self.unfamiliarity(pooled), 1 - UNFAMILIAR_VALIDATION_SHARE))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints from before calibration have no temperature (theirs is 1) and flag nothing.
        state = checkpoint["state_dict"]
        state.setdefault("temperature", torch.ones(()))
        if "feature_means" not in state:  # nor a familiarity model: it flags nothing
            state["feature_means"], state["feature_precision"] = self.feature_means, self.feature_precision
            state["unfamiliar_threshold"] = torch.tensor(float("inf"))
