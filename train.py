"""Train a model from a config file.

    python train.py --config configs/cls.yaml [--trainer.max_epochs 3] [--data.root PATH]
    python train.py --config configs/cls.yaml --ckpt_path last      # resume
"""

from lightning_modules.cli import BrainTumorCLI, run_with_clean_errors


def main(args: list[str] | None = None) -> None:
    cli = BrainTumorCLI(args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)


if __name__ == "__main__":
    run_with_clean_errors(main)
