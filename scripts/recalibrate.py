"""Fit a checkpoint's post-processing anew on its own validation split, as training fits it after
every validation epoch: a classifier's temperature and "unlike the training data" model, a
segmenter's mask threshold and tumour decision. For checkpoints trained before these existed (or
changed); the weights are untouched.

    python scripts/recalibrate.py --ckpt_path runs/cls/version_0 --output recalibrated.ckpt [--data.root DATASET]
    python scripts/recalibrate.py --ckpt_path runs/seg/version_0 --output recalibrated.ckpt [--data.negatives ...]

--data.root, --data.negatives: where the training data lives now, if it moved (the split is recomputed
from the files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.checkpoints import read_checkpoint  # noqa: E402
from lightning_modules.classification import ClassificationModule  # noqa: E402
from lightning_modules.cli import run_with_clean_errors  # noqa: E402
from lightning_modules.precision import Hardware, fastest_precision  # noqa: E402
from lightning_modules.trained_model import TrainedModel  # noqa: E402

CLASSIFIER_FITTED = ("temperature", "feature_means", "feature_precision", "unfamiliar_threshold")
SEGMENTER_FITTED = ("threshold", "tumor_area_threshold", "detection_threshold")


@torch.no_grad()
def refit_classifier(trained: TrainedModel, datamodule: L.LightningDataModule, batch_size: int) -> str:
    outputs = [
        (trained.module.forward_with_features(images), labels)
        for images, labels in torch.utils.data.DataLoader(datamodule.datasets["val"], batch_size)
    ]
    logits, pooled = (torch.cat([output[0][i] for output in outputs]) for i in (0, 1))
    labels = torch.cat([output[1] for output in outputs])
    trained.module.calibrate(logits, labels, pooled)
    return f"temperature {float(trained.module.temperature):.3f}, fitted on {len(labels)} validation images"


def refit_segmenter(trained: TrainedModel, datamodule: L.LightningDataModule, precision: str) -> str:
    # The module fits them at the end of a validation epoch: run one, in the precision training picks
    # on this machine (the one of the checkpoint's last validation, when it was trained here).
    trainer = L.Trainer(
        accelerator="auto", precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.validate(trained.module, datamodule=datamodule, verbose=False)
    module = trained.module
    return (
        f"threshold {float(module.threshold):.2f}, a tumour where at least {float(module.tumor_area_threshold):.0f} px "
        f"reach {float(module.detection_threshold):.2f}, fitted on {len(datamodule.datasets['val'])} validation slices"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a classification or segmentation .ckpt file or run folder")
    parser.add_argument("--output", required=True, help="the recalibrated checkpoint to write")
    parser.add_argument("--data.root", dest="data_root", nargs="+", help="the training data, if it moved")
    parser.add_argument("--data.negatives", dest="data_negatives", nargs="+", help="a segmenter's healthy slices")
    parser.add_argument("--batch_size", type=int, default=64, help="a classifier's; a segmenter uses its training one")
    parser.add_argument("--precision", help="a segmenter's (default: what training picks on this machine)")
    args = parser.parse_args(argv)
    trained = TrainedModel.load(args.ckpt_path, None, torch.device("cpu"))
    datamodule = trained.datamodule(args.data_root, negatives=args.data_negatives)
    if isinstance(trained.module, ClassificationModule):
        datamodule.setup("fit")
        message, fitted = refit_classifier(trained, datamodule, args.batch_size), CLASSIFIER_FITTED
    else:
        precision = args.precision or fastest_precision("auto", Hardware.detect())[0]
        message, fitted = refit_segmenter(trained, datamodule, precision), SEGMENTER_FITTED
    checkpoint = read_checkpoint(trained.checkpoint)
    checkpoint = {key: value for key, value in checkpoint.items()}  # the memory-mapped file is about to be replaced
    refitted = {name: getattr(trained.module, name).detach().clone() for name in fitted}
    checkpoint["state_dict"] = {**checkpoint["state_dict"], **refitted}
    torch.save(checkpoint, args.output)
    print(f"wrote {args.output}: {message}")


if __name__ == "__main__":
    run_with_clean_errors(main)
