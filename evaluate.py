"""Evaluate a checkpoint on the test split (the validation split when the dataset has no test split).

    python evaluate.py --config configs/cls.yaml --data.root DATA --ckpt_path runs/cls/version_0 [--output_dir DIR]

--ckpt_path is a .ckpt file or a run folder (its checkpoints/best.ckpt). Writes DIR/metrics.json
and the task's figures (PNG) and prints a table. DIR defaults to the run folder's evaluation/
(next to the checkpoint, for one kept outside a run folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.errors import UserError
from lightning_modules.checkpoints import run_folder_of
from lightning_modules.cli import BrainTumorCLI, run_with_clean_errors
from lightning_modules.inference import TrainedModel


class EvaluateCLI(BrainTumorCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="The checkpoint to evaluate: a .ckpt file or a run folder (its best.ckpt).")  # fmt: skip
        parser.add_argument("--output_dir", type=str | None, default=None,
                            help="Where the report goes (default: the run folder's evaluation/).")  # fmt: skip


def default_output_dir(checkpoint: Path) -> Path:
    run = run_folder_of(checkpoint)
    return run / "evaluation" if run else checkpoint.with_name(f"{checkpoint.stem}-evaluation")


def with_preprocessing(datamodule: L.LightningDataModule, trained: TrainedModel) -> L.LightningDataModule:
    """The datamodule, rebuilt if the checkpoint was trained at another image size or channel count."""
    preprocessing = {"image_size": trained.image_size, "channels": trained.channels}
    if all(datamodule.hparams.get(key) == value for key, value in preprocessing.items()):
        return datamodule
    rank_zero_warn(f"{trained.checkpoint}: evaluating with the checkpoint's preprocessing {preprocessing}, not the config's")
    arguments = {key: value for key, value in datamodule.hparams.items() if not key.startswith("_")}  # "_class_path"
    return type(datamodule)(**{**arguments, **preprocessing})


def main(args: list[str] | None = None) -> None:
    cli = EvaluateCLI(args)
    ckpt_path = cli.config.ckpt_path
    if not ckpt_path:
        raise UserError("--ckpt_path is required: the checkpoint or run folder to evaluate")
    # The architecture and the preprocessing come from the checkpoint, not the config: the
    # config only says where the data is and how to run. A UNet runs at any input size, so a
    # size mismatch would otherwise give different numbers without any error.
    trained = TrainedModel.load(ckpt_path, type(cli.model), torch.device("cpu"))
    model = trained.module
    datamodule = with_preprocessing(cli.datamodule, trained)
    trainer = L.Trainer(
        accelerator=cli.config.trainer.accelerator,
        devices=1,  # per-image results are gathered in one process
        precision=cli.config.trainer.precision,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)

    checkpoint = Path(trained.checkpoint)
    output_dir = Path(cli.config.output_dir) if cli.config.output_dir else default_output_dir(checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {"checkpoint": str(checkpoint), "split": datamodule.test_split_name, "image_size": trained.image_size,
               "channels": trained.channels, **model.test_results}  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    for name, figure in model.evaluation_figures(datamodule).items():
        figure.savefig(output_dir / f"{name}.png", bbox_inches="tight")
    print(model.format_report(results))
    print(f"wrote {output_dir}/metrics.json and figures", file=sys.stderr)


if __name__ == "__main__":
    run_with_clean_errors(main)
