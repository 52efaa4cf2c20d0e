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


def refit(trained: TrainedModel, datamodule: L.LightningDataModule, precision: str) -> str:
    """Run one validation epoch, at whose end the module fits its post-processing, in `precision` (the
    one training picks on this machine: the checkpoint's last validation, when it was trained here)."""
    trainer = L.Trainer(
        accelerator="auto", precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.validate(trained.module, datamodule=datamodule, verbose=False)
    module, count = trained.module, len(datamodule.datasets["val"])
    if isinstance(module, ClassificationModule):
        return f"temperature {float(module.temperature):.3f}, fitted on {count} validation images"
    return (
        f"threshold {float(module.threshold):.2f}, a tumour where at least {float(module.tumor_area_threshold):.0f} px "
        f"reach {float(module.detection_threshold):.2f}, fitted on {count} validation slices"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a classification or segmentation .ckpt file or run folder")
    parser.add_argument("--output", required=True, help="the recalibrated checkpoint to write")
    parser.add_argument("--data.root", dest="data_root", nargs="+", help="the training data, if it moved")
    parser.add_argument("--data.negatives", dest="data_negatives", nargs="+", help="a segmenter's healthy slices")
    parser.add_argument("--precision", help="default: what training picks on this machine")
    args = parser.parse_args(argv)
    trained = TrainedModel.load(args.ckpt_path, None, torch.device("cpu"))
    datamodule = trained.datamodule(args.data_root, negatives=args.data_negatives)
    message = refit(trained, datamodule, args.precision or fastest_precision("auto", Hardware.detect())[0])
    checkpoint = read_checkpoint(trained.checkpoint)
    checkpoint = {key: value for key, value in checkpoint.items()}  # the memory-mapped file is about to be replaced
    refitted = {name: trained.module.get_buffer(name).detach().clone() for name in trained.module.fitted_buffers}
    checkpoint["state_dict"] = {**checkpoint["state_dict"], **refitted}
    torch.save(checkpoint, args.output)
    print(f"wrote {args.output}: {message}")


if __name__ == "__main__":
    run_with_clean_errors(main)
