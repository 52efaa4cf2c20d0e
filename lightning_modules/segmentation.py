"""LightningModule for binary brain-tumor segmentation with an smp network (a UNet by default)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import segmentation_models_pytorch as smp
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.errors import ConfigError, check_range
from common.metrics import (
    THRESHOLD_GRID,
    best_threshold,
    segmentation_scores,
    segmentation_stats,
    threshold_curve,
)
from common.postprocessing import remove_small_components
from common.visualization import segmentation_figure
from datamodules.mask_sources import BOX_INTERIOR
from lightning_modules.base import TaskModule
from lightning_modules.models import create_segmenter, mean_of_logits
from lightning_modules.pretrained import load_encoder_weights, pretraining_fingerprints
from lightning_modules.tta import TTA_VIEWS, run_with_tta

HEALTHY_FALSE_POSITIVE_SHARE = 0.02  # of healthy validation slices that the fitted decision may give a tumour


def tumor_area_threshold(healthy_areas: torch.Tensor, share: float = HEALTHY_FALSE_POSITIVE_SHARE) -> float:
    """The least tumour area (pixels) that at most `share` of these healthy slices reach; 0 without any."""
    if not len(healthy_areas):
        return 0.0
    allowed = int(share * len(healthy_areas))  # healthy slices that may still be given a tumour
    return float(healthy_areas.sort(descending=True).values[allowed]) + 1


def fit_tumor_decision(areas: torch.Tensor, has_tumor: torch.Tensor) -> tuple[int, float]:
    """The detection level (a column of `areas`, the slices' tumour areas at increasing probability
    levels) and least area that give the most tumour slices a tumour while leaving at most
    HEALTHY_FALSE_POSITIVE_SHARE of the healthy ones one; ties go to the highest level. Without healthy
    slices nothing bounds the levels: the last one, with any pixel a tumour."""
    healthy, last = ~has_tumor, areas.shape[1] - 1
    if not healthy.any():
        return last, 0.0
    thresholds = [tumor_area_threshold(areas[healthy, level]) for level in range(last + 1)]
    found = [int((areas[has_tumor, level] >= max(thresholds[level], 1)).sum()) for level in range(last + 1)]
    level = max(range(last + 1), key=lambda level: (found[level], level))
    return level, thresholds[level]


class SegmentationModule(TaskModule):
    """A segmentation network (a UNet by default) predicting one tumor logit per pixel.

    Args:
        encoder_name: any smp encoder ("resnet50", "mobilenet_v2", "resnet18", ...).
        arch: the smp architecture around it ("unet", "unetplusplus", "fpn", ...; smp.create_model's `arch`).
        encoder_weights: "imagenet" (downloaded), null, a local ImageNet checkpoint path, or a classification
            checkpoint or run folder whose classifier is `encoder_name` (an encoder pretrained on MRI, see
            configs/cls_resnet50.yaml); read when training starts, so a trained checkpoint needs neither the
            file nor the network.
        weights_path: a trained segmenter to fine-tune (a checkpoint, run folder or model file such as
            models/segmenter.safetensors, of `arch`, `encoder_name` and `in_channels`): every weight and fitted
            threshold starts from it, e.g. for epochs on whole slices after crops or with another loss.
            `encoder_weights` is then not read. Read when training starts, and refused if it saw some of
            this run's images without having this run's data and split (its validation images could be
            among this run's training images, or the reverse); the images it saw count as seen in evaluate.py.
        members: trained segmenters (as `weights_path`, each checked as it is; `FILE#K`: member K of an
            ensemble file) whose ensemble this module is: its logits are the mean of theirs
            (models.MeanOfLogits); its threshold and tumour decision start from the first's, and
            scripts/recalibrate.py fits them to the ensemble (README, "An ensemble of models").
            `weights_path` and `encoder_weights` are then not read.
        member_networks: for members of different architectures, each one's own `encoder_name` and `arch`
            (one mapping per member, in order; scripts/recalibrate.py records them); unset, every member is
            `arch` on `encoder_name`.
        in_channels: image channels; train.py links it to the datamodule's `channels`.
        dice_weight: weight of the Dice loss (one Dice over each batch's pixels, so large tumours weigh most).
        bce_weight: weight of the binary cross-entropy loss.
        lovasz_weight: weight of the Lovasz hinge loss per image (a surrogate of each slice's IoU, so a
            small tumour weighs as much as a large one, as in Dice per tumour slice).
        tversky_weight: weight of the Tversky loss, a Dice that charges a missed tumour pixel 0.7 and a false
            one 0.3 (Salehi et al., 2017; over each batch's pixels, as the Dice loss), for masks that fall short.
        focal_weight: weight of the focal loss (binary cross-entropy scaled by (1 - p)^2 for the true class's
            probability p, so pixels already right count little; Lin et al., 2017).
        box_weight: weight of the box projection loss on box-labelled images (`SegmentationDataModule(boxes=...)`;
            BoxInst's: the predicted mask's maxima along rows and along columns match the box's, so any
            shape that touches every row and column of the box fits it). The other losses ignore the
            pixels inside boxes and learn only the background around them.
        tta: the views the model's masks average (a key of lightning_modules.tta.TTA_VIEWS; "hflip" adds the
            mirrored slice): validation scores their mean and fits the threshold and tumour decision on it, and
            predict.py, app.py and evaluate.py use them unless told otherwise. Training sees one view at a time.
        min_tumor_area: predicted tumours (connected components) of fewer pixels, at the model's input size,
            are dropped from the masks that predict.py, app.py and evaluate.py show; 0 keeps all.
        preview_every_n_epochs: log an image / truth / prediction grid to TensorBoard this often.
        preview_images: images in that grid.
        **kwargs: optimizer and schedule options of `TaskModule`.
    """

    run_name = "seg"
    checkpoint_monitor = "val/iou_global"
    fitted_buffers = ("threshold", "tumor_area_threshold", "detection_threshold")
    network_arguments = ("encoder_name", "arch")

    def __init__(
        self,
        encoder_name: str = "resnet50",
        arch: str = "unet",
        encoder_weights: str | None = None,
        weights_path: str | None = None,
        members: list[str] | None = None,
        member_networks: list[dict] | None = None,
        in_channels: int = 3,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        lovasz_weight: float = 0.0,
        tversky_weight: float = 0.0,
        focal_weight: float = 0.0,
        box_weight: float = 1.0,
        tta: str = "none",
        min_tumor_area: int = 0,
        preview_every_n_epochs: int = 5,
        preview_images: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (
            ("dice_weight", dice_weight),
            ("bce_weight", bce_weight),
            ("lovasz_weight", lovasz_weight),
            ("tversky_weight", tversky_weight),
            ("focal_weight", focal_weight),
            ("box_weight", box_weight),
            ("min_tumor_area", min_tumor_area),
            ("preview_every_n_epochs", preview_every_n_epochs),
            ("preview_images", preview_images),
        ):
            check_range(name, value, 0)
        if tta not in TTA_VIEWS:
            raise ConfigError(f"tta '{tta}': use one of {', '.join(TTA_VIEWS)}")
        if dice_weight == bce_weight == lovasz_weight == tversky_weight == focal_weight == 0:
            raise ConfigError("every loss weight (dice, bce, lovasz, tversky, focal) is 0: nothing to train on")
        networks = [  # one per member, or one
            create_segmenter(arguments["encoder_name"], None, in_channels, arguments["arch"])
            for arguments in self.member_arguments()
        ]
        self.net = mean_of_logits(networks)
        self.dice_loss = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True, ignore_index=BOX_INTERIOR)
        self.bce_loss = smp.losses.SoftBCEWithLogitsLoss(ignore_index=BOX_INTERIOR)
        self.lovasz_loss = smp.losses.LovaszLoss(smp.losses.BINARY_MODE, per_image=True, ignore_index=BOX_INTERIOR)
        self.tversky_loss = smp.losses.TverskyLoss(
            smp.losses.BINARY_MODE, alpha=0.3, beta=0.7, ignore_index=BOX_INTERIOR
        )
        self.focal_loss = smp.losses.FocalLoss(smp.losses.BINARY_MODE, ignore_index=BOX_INTERIOR)
        self.projection_dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=False)
        self.val_stats = segmentation_stats()
        self.val_threshold_curve = threshold_curve()
        # The probability above which a pixel is tumour in predicted masks: the one of THRESHOLD_GRID
        # with the best global IoU on each epoch's validation split, so every checkpoint has its own.
        # (Training still selects checkpoints by IoU at 0.5, which the threshold does not influence.)
        self.register_buffer("threshold", torch.tensor(0.5))
        # "Is there a tumour?": a slice is given one only when at least `tumor_area_threshold` pixels (at
        # the model's input size) reach `detection_threshold`, a probability level at most the threshold.
        # Fitted with the threshold on validation: of the levels of THRESHOLD_GRID up to it, the one that
        # finds the most tumour slices once its least area leaves at most HEALTHY_FALSE_POSITIVE_SHARE of
        # the healthy slices a tumour. Area 0: any pixel (no healthy slices seen, the level is the threshold).
        self.register_buffer("tumor_area_threshold", torch.tensor(0.0))
        self.register_buffer("detection_threshold", torch.tensor(0.5))
        self._val_areas: list[tuple[torch.Tensor, torch.Tensor]] = []  # per batch: areas at each threshold, has tumour

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def predict_logits(self, images: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """Logits averaged over the views of `tta` (default: the model's own), what tumor_masks takes."""
        return run_with_tta(self, images, self.hparams.tta if tta is None else tta)

    def tumor_masks(self, logits: torch.Tensor, min_tumor_area: int | None = None) -> torch.Tensor:
        """Binary masks (N, 1, H, W) from logits: probabilities at or above the fitted threshold, without
        tumours smaller than `min_tumor_area` pixels (default: the module's); empty for a slice whose area
        at the fitted `detection_threshold` stays below `tumor_area_threshold` (no tumour), and that area
        for a tumour found at the detection level only (so a slice given a tumour never shows none)."""
        min_area = self.hparams.min_tumor_area if min_tumor_area is None else min_tumor_area
        probabilities = logits.float().sigmoid()
        threshold, detection_threshold = self.fitted("threshold", logits), self.fitted("detection_threshold", logits)
        masks = self._masks_at(probabilities, threshold, min_area)
        detected = masks
        if detection_threshold < threshold:
            detected = self._masks_at(probabilities, detection_threshold, min_area)
            masks = torch.where(masks.flatten(1).any(dim=1)[:, None, None, None], masks, detected)
        has_tumor = detected.flatten(1).sum(dim=1) >= self.fitted("tumor_area_threshold", logits).clamp_min(1)
        return masks & has_tumor[:, None, None, None]

    @staticmethod
    def _masks_at(probabilities: torch.Tensor, level: torch.Tensor, min_area: int) -> torch.Tensor:
        masks = probabilities >= level
        if min_area > 1:
            kept = [remove_small_components(mask[0].cpu().numpy().astype(np.uint8), min_area) for mask in masks]
            masks = torch.from_numpy(np.stack(kept)[:, None] > 0).to(masks.device)
        return masks

    @staticmethod
    def network_of(hparams: Mapping) -> str:
        return f"a {hparams['arch']} on {hparams['encoder_name']} of {hparams['in_channels']}-channel images"

    def load_pretrained_weights(self) -> None:
        hp = self.hparams
        if hp.members or hp.weights_path is not None:
            datamodule = getattr(self._trainer, "datamodule", None)
            self.load_trained_weights(hp.members or [hp.weights_path], datamodule)
        elif hp.encoder_weights is not None:
            load_encoder_weights(self.net.encoder, hp.encoder_name, hp.encoder_weights)
            self.pretraining_fingerprints = pretraining_fingerprints(hp.encoder_weights)
            rank_zero_info(f"Encoder {hp.encoder_name}: every weight from {hp.encoder_weights}")

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        terms = (
            (hp.dice_weight, self.dice_loss),
            (hp.bce_weight, self.bce_loss),
            (hp.lovasz_weight, self.lovasz_loss),
            (hp.tversky_weight, self.tversky_loss),
            (hp.focal_weight, self.focal_loss),
        )
        loss = sum(weight * loss(logits, masks) for weight, loss in terms if weight)
        boxes = masks == BOX_INTERIOR
        boxed = boxes.flatten(1).any(dim=1)
        if hp.box_weight and boxed.any():
            loss = loss + hp.box_weight * self.box_projection_loss(logits[boxed], boxes[boxed])
        return loss

    def box_projection_loss(self, logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """BoxInst's projection loss (Tian et al., CVPR 2021): Dice between the tumour probabilities'
        maxima along each row and the boxes' (their vertical extent), plus the same along columns."""
        probabilities = logits.float().sigmoid()
        return sum(self.projection_dice(probabilities.amax(dim), boxes.float().amax(dim)) for dim in (-1, -2))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        self.log("val/loss", self.loss(logits, masks), on_epoch=True, prog_bar=True)
        logits = run_with_tta(self, images, self.hparams.tta, unflipped=logits)  # what the model's masks are made of
        self.val_stats.update(logits.sigmoid(), masks.int())
        probabilities = logits.float().sigmoid()
        self.val_threshold_curve.update(probabilities, masks.int())
        grid = torch.tensor(THRESHOLD_GRID, device=probabilities.device)
        areas = (probabilities.flatten(1)[:, :, None] >= grid).sum(dim=1)  # (N, thresholds)
        self._val_areas.append((areas, masks.flatten(1).amax(dim=1) > 0))
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
        threshold, iou = best_threshold(self.val_threshold_curve)
        self.val_threshold_curve.reset()
        if not self.trainer.sanity_checking:
            self.threshold.fill_(threshold)
            self.log_dict({"val/threshold": threshold, "val/iou_global_at_threshold": iou})
            self._fit_tumor_decision(min(range(len(THRESHOLD_GRID)), key=lambda i: abs(THRESHOLD_GRID[i] - threshold)))
        self._val_areas.clear()

    def _fit_tumor_decision(self, threshold_index: int) -> None:
        """Fit `detection_threshold` and `tumor_area_threshold` on this epoch's validation slices (of
        every process)."""
        areas, has_tumor = (self.all_gather(torch.cat(parts)) for parts in zip(*self._val_areas))
        areas, has_tumor = areas.reshape(-1, len(THRESHOLD_GRID)), has_tumor.reshape(-1)
        level, area = fit_tumor_decision(areas[:, : threshold_index + 1], has_tumor)
        self.detection_threshold.fill_(THRESHOLD_GRID[level])
        self.tumor_area_threshold.fill_(area)
        found = areas[:, level] >= self.tumor_area_threshold.clamp_min(1)
        rates = {"val/tumor_slices_found": found[has_tumor], "val/healthy_slices_given_a_tumor": found[~has_tumor]}
        self.log_dict({name: values.float().mean() for name, values in rates.items() if len(values)})
        self.log_dict({"val/tumor_area_threshold": area, "val/detection_threshold": THRESHOLD_GRID[level]})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints from before threshold tuning cut at 0.5.
        checkpoint["state_dict"].setdefault("threshold", torch.tensor(0.5))
        # ... and those from before the tumour decision give any slice with a pixel above it a tumour.
        checkpoint["state_dict"].setdefault("tumor_area_threshold", torch.tensor(0.0))
        # ... and those from before the detection level count the area at the threshold.
        checkpoint["state_dict"].setdefault("detection_threshold", checkpoint["state_dict"]["threshold"].clone())
