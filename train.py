"""Train a model from a config file.

    python train.py --config configs/cls.yaml [--trainer.max_epochs 3] [--data.root PATH]
    python train.py --config configs/cls.yaml --ckpt_path last      # resume the newest run

Each run writes one folder, <trainer.default_root_dir>/<task>/version_N/, with its config.yaml,
TensorBoard events and checkpoints/ (see lightning_modules.checkpoints). A resumed run goes on
in its own folder.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser

from lightning_modules.checkpoints import find_resume_checkpoint, read_checkpoint, run_folder_of
from lightning_modules.cli import BrainTumorCLI, run_with_clean_errors


class TrainCLI(BrainTumorCLI):
    """The shared CLI plus `--ckpt_path`, which resumes a run in that run's own folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume training: a .ckpt file, a run folder, or 'last' for the newest run of this config's task.",
        )

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if not self.config.ckpt_path:
            return
        logger = self.config.trainer.logger
        logger_args = getattr(logger, "init_args", None)
        task_folder = Path(logger_args.save_dir) / logger_args.name if logger_args else None
        checkpoint = find_resume_checkpoint(self.config.ckpt_path, task_folder)
        global_step = read_checkpoint(checkpoint)["global_step"]  # also checks that it is a readable checkpoint
        self.config.ckpt_path = str(checkpoint)
        run = run_folder_of(checkpoint)
        if logger_args is not None and run is not None and run.parent.resolve() == task_folder.resolve():
            # Go on in the same run folder, and have TensorBoard drop what the interrupted run logged after
            # the checkpoint, so that no step appears twice.
            logger_args.version = run.name
            logger_args.purge_step = global_step


def main(args: list[str] | None = None) -> None:
    cli = TrainCLI(args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)


if __name__ == "__main__":
    run_with_clean_errors(main)
