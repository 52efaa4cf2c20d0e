"""LightningModule for 4-class brain-tumor classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from datamodules.classification import CLASS_NAMES, NO_TUMOR_CLASS
from lightning_modules.base import TaskModule
from lightning_modules.metrics import classification_metrics, classification_report
from lightning_modules.models import check_pretrained_source, create_classifier
from lightning_modules.visualization import confusion_matrix_figure


class ClassificationModule(TaskModule):
    """Classifier for glioma / meningioma / no tumor / pituitary MRI slices.

    Args:
        model: "residual_cnn" (trained from scratch) or any timm model name.
        in_channels: image channels; train.py links it to the datamodule's `channels`.
        pretrained: start a timm model from ImageNet weights (downloaded from the hub when training starts).
        weights_path: local pretrained weights for a timm model, for offline machines (read when training starts;
            a trained checkpoint no longer needs the file).
        model_kwargs: extra constructor arguments, e.g. {width: 32, depths: [1, 2, 2, 2]}.
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha: Beta(alpha, alpha) mixing of image pairs and their labels (timm's Mixup); 0 turns it off.
        cutmix_alpha: the same for pasting a box of one image into another; 0 turns it off.
        mix_prob: fraction of training batches that are mixed (mixup or cutmix, half each when both are on).
        **kwargs: optimizer and schedule options of `TaskModule`.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        model: str = "residual_cnn",
        in_channels: int = 1,
        pretrained: bool = False,
        weights_path: str | None = None,
        model_kwargs: dict | None = None,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        num_classes = len(CLASS_NAMES)
        check_pretrained_source(model, pretrained, weights_path)
        self.net = create_classifier(model, num_classes, in_channels, **(model_kwargs or {}))
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=1.0,  # training_step draws which batches mix, so it knows which ones did
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            self.soft_target_loss = SoftTargetCrossEntropy()
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.test_results: dict = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def load_pretrained_weights(self) -> None:
        hp = self.hparams
        if hp.pretrained or hp.weights_path:
            pretrained = create_classifier(hp.model, len(CLASS_NAMES), hp.in_channels, hp.pretrained, hp.weights_path,
                                           **(hp.model_kwargs or {}))  # fmt: skip
            self.net.load_state_dict(pretrained.state_dict())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of an unblended batch (label-smoothed cross-entropy)."""
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def _mixes(self, images: torch.Tensor) -> bool:
        # timm's Mixup pairs images, so an odd batch stays unmixed
        return self.mixup is not None and len(images) % 2 == 0 and float(torch.rand(())) < self.hparams.mix_prob

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self._mixes(images):  # Mixup returns soft targets with the label smoothing already applied
            images, targets = self.mixup(images, labels)
            loss = self.soft_target_loss(self(images), targets)
        else:
            logits = self(images)
            loss = self.loss(logits, labels)
            # Only here: on a blended image, neither of the two labels is "the" right answer.
            self.log("train/acc", (logits.argmax(dim=1) == labels).float().mean(), on_step=True, on_epoch=True,
                     prog_bar=True)  # fmt: skip
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, prog_bar=True)
        self.val_metrics.update(logits, labels)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.test_metrics.update(self(images), labels)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        values = {k.removeprefix("val/"): v for k, v in self.val_metrics.compute().items()}
        self.log("val/acc", values["acc"], prog_bar=True)
        scalars = {"val/acc_macro": values["acc_macro"]}
        for name in ("precision", "recall", "f1"):
            for c, class_name in enumerate(CLASS_NAMES):
                scalars[f"val/{name}_{class_name}"] = values[name][c]
        self.log_dict(scalars)
        if not self.trainer.sanity_checking:
            self.log_figure("val/confusion_matrix", confusion_matrix_figure(values["confmat"], CLASS_NAMES))
        self.val_metrics.reset()

    def evaluation_figures(self, datamodule) -> dict[str, Figure]:
        confmat = torch.tensor(self.test_results["confusion_matrix"])
        title = f"{datamodule.test_split_name} split, accuracy {self.test_results['accuracy']:.1%}"
        return {"confusion_matrix": confusion_matrix_figure(confmat, CLASS_NAMES, title)}

    @staticmethod
    def format_report(results: dict) -> str:
        lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
        for name, row in results["per_class"].items():
            lines.append(f"{name:<12}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10}")
        lines += [
            f"accuracy {results['accuracy']:.4f} (macro {results['accuracy_macro']:.4f}) on {results['num_images']} "
            f"{results['split']} images",
            f"tumor vs no tumor: sensitivity {results['tumor_sensitivity']:.4f}, specificity {results['tumor_specificity']:.4f}",
        ]
        return "\n".join(lines)

    def on_test_epoch_end(self) -> None:
        values = {k.removeprefix("test/"): v for k, v in self.test_metrics.compute().items()}
        self.test_results = classification_report(values, CLASS_NAMES, NO_TUMOR_CLASS)
        self.log_dict({"test/acc": values["acc"], "test/acc_macro": values["acc_macro"]})
        self.test_metrics.reset()
