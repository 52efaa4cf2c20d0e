"""LightningModule for binary brain-tumor segmentation with an smp UNet."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from matplotlib.figure import Figure

from lightning_modules.base import TaskModule
from lightning_modules.metrics import per_image_scores, segmentation_scores, segmentation_stats
from lightning_modules.models import create_segmenter
from lightning_modules.visualization import segmentation_figure

IOU_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class SegmentationModule(TaskModule):
    """UNet predicting one tumor logit per pixel.

    Args:
        encoder_name: any smp encoder ("resnet50", "mobilenet_v2", "resnet18", ...).
        encoder_weights: "imagenet" (downloaded), null, or a local ImageNet checkpoint path; read when training
            starts, so a trained checkpoint needs neither the file nor the network.
        in_channels: image channels; train.py links it to the datamodule's `channels`.
        dice_weight: weight of the Dice loss.
        bce_weight: weight of the binary cross-entropy loss.
        preview_every_n_epochs: log an image / truth / prediction grid to TensorBoard this often.
        preview_images: images in that grid.
        **kwargs: optimizer and schedule options of `TaskModule`.
    """

    def __init__(
        self,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        preview_every_n_epochs: int = 5,
        preview_images: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.net = create_segmenter(encoder_name, None, in_channels)
        self.dice_loss = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce_loss = smp.losses.SoftBCEWithLogitsLoss()
        self.val_stats = segmentation_stats()
        self.test_stats = segmentation_stats()
        self.test_results: dict = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def load_pretrained_weights(self) -> None:
        hp = self.hparams
        if hp.encoder_weights is not None:
            pretrained = create_segmenter(hp.encoder_name, hp.encoder_weights, hp.in_channels)
            self.net.encoder.load_state_dict(pretrained.encoder.state_dict())

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return hp.dice_weight * self.dice_loss(logits, masks) + hp.bce_weight * self.bce_loss(logits, masks)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        self.log("val/loss", self.loss(logits, masks), on_epoch=True, prog_bar=True)
        self.val_stats.update(logits.sigmoid(), masks.int())
        if batch_idx == 0 and self._preview_due():
            count = self.hparams.preview_images
            figure = segmentation_figure(images[:count], masks[:count], logits[:count] > 0)
            self.log_figure("val/predictions", figure)

    def _preview_due(self) -> bool:
        every = self.hparams.preview_every_n_epochs
        return not self.trainer.sanity_checking and every > 0 and self.current_epoch % every == 0

    def on_validation_epoch_end(self) -> None:
        scores = segmentation_scores(self.val_stats.compute())
        self.log("val/iou_global", scores.pop("iou_global"), prog_bar=True)
        self.log_dict({f"val/{name}": value for name, value in scores.items()})
        self.val_stats.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        self.test_stats.update(self(images).sigmoid(), masks.int())

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).sigmoid()

    def on_test_epoch_end(self) -> None:
        stats = self.test_stats.compute()
        iou, _ = per_image_scores(stats)
        has_tumor = (stats[:, 0] + stats[:, 3]) > 0
        predicted_empty = (stats[:, 0] + stats[:, 1]) == 0
        self.test_results = {
            "num_images": len(stats),
            **segmentation_scores(stats),
            "per_image_iou_quantiles": {
                f"q{round(q * 100)}": float(torch.quantile(iou[has_tumor], q)) for q in IOU_QUANTILES
            } if has_tumor.any() else {},
            "empty_ground_truth": {
                "images": int((~has_tumor).sum()),
                "predicted_empty": int((~has_tumor & predicted_empty).sum()),
                "how_counted": "per-image IoU/Dice is 1 when truth and prediction are both empty, 0 when only "
                "the truth is; such images add nothing to the global scores, which pool pixels over all images",
            },
            "per_image_iou": [round(float(v), 4) for v in iou],
        }  # fmt: skip
        self.log_dict({f"test/{k}": v for k, v in segmentation_scores(stats).items()})
        self.test_stats.reset()

    @torch.no_grad()
    def evaluation_figures(self, datamodule, count: int = 4) -> dict[str, Figure]:
        """The `count` worst and best images of the evaluated split by per-image IoU."""
        dataset = datamodule.datasets[datamodule.test_split_name]
        iou = torch.tensor(self.test_results["per_image_iou"])
        order = torch.argsort(iou)
        figures = {}
        for name, indices in (("worst_cases", order[:count]), ("best_cases", order.flip(0)[:count])):
            images, masks = map(torch.stack, zip(*(dataset[int(i)] for i in indices)))
            self.eval()
            predictions = self(images.to(self.device)).sigmoid().cpu() > 0.5
            titles = [f"IoU {iou[i]:.2f}" for i in indices]
            figures[name] = segmentation_figure(images, masks, predictions, titles)
        return figures

    @staticmethod
    def format_report(results: dict) -> str:
        empty = results["empty_ground_truth"]
        quantiles = ", ".join(f"{k} {v:.3f}" for k, v in results["per_image_iou_quantiles"].items())
        return "\n".join(
            [
                f"{results['num_images']} {results['split']} images",
                f"global (pixels pooled):  IoU {results['iou_global']:.4f}  Dice {results['dice_global']:.4f}",
                f"mean per image:          IoU {results['iou_per_image']:.4f}  Dice {results['dice_per_image']:.4f}",
                f"mean per tumor image:    IoU {results['iou_per_tumor_image']:.4f}",
                f"per-image IoU quantiles (tumor images): {quantiles}",
                f"empty ground truth: {empty['images']} images, {empty['predicted_empty']} predicted empty",
            ]
        )
