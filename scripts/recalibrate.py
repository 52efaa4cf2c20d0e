"""Fit a classifier checkpoint's calibration anew on its own validation split: the temperature and
the "unlike the training data" model. For checkpoints trained before these existed (or changed);
training fits them after every validation epoch by itself.

    python scripts/recalibrate.py --ckpt_path runs/cls/version_0 --output recalibrated.ckpt [--data.root DATASET]

--data.root: where the training data lives now, if it moved (the split is recomputed from the files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.checkpoints import read_checkpoint  # noqa: E402
from lightning_modules.classification import ClassificationModule  # noqa: E402
from lightning_modules.cli import run_with_clean_errors  # noqa: E402
from lightning_modules.trained_model import TrainedModel  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a classification .ckpt file or run folder")
    parser.add_argument("--output", required=True, help="the recalibrated checkpoint to write")
    parser.add_argument("--data.root", dest="data_root", nargs="+", help="the training data, if it moved")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    trained = TrainedModel.load(args.ckpt_path, ClassificationModule, torch.device("cpu"))
    datamodule = trained.datamodule(args.data_root)
    datamodule.setup("fit")
    outputs = [
        (trained.module.forward_with_features(images), labels)
        for images, labels in torch.utils.data.DataLoader(datamodule.datasets["val"], args.batch_size)
    ]
    logits, pooled = (torch.cat([output[0][i] for output in outputs]) for i in (0, 1))
    labels = torch.cat([output[1] for output in outputs])
    module = trained.module
    module.calibrate(logits, labels, pooled)
    checkpoint = read_checkpoint(trained.checkpoint)
    checkpoint = {key: value for key, value in checkpoint.items()}  # the memory-mapped file is about to be replaced
    names = ("temperature", "feature_means", "feature_precision", "unfamiliar_threshold")
    checkpoint["state_dict"] = {**checkpoint["state_dict"], **{name: getattr(module, name).clone() for name in names}}
    torch.save(checkpoint, args.output)
    print(
        f"wrote {args.output}: temperature {float(module.temperature):.3f}, fitted on {len(labels)} validation images"
    )


if __name__ == "__main__":
    run_with_clean_errors(main)
