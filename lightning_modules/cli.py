"""The command line shared by train.py and evaluate.py: Lightning's own CLI.

Configs mirror constructor signatures (`class_path` + `init_args`), any key can be
overridden on the command line, and `--print_config` shows the resolved result."""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from collections.abc import Callable

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.common import DatasetError
from lightning_modules.models import PretrainedWeightsError

USER_ERRORS = (DatasetError, FileNotFoundError, ValueError, ArgumentError, PretrainedWeightsError)

# jsonargparse explains a bad key against every member of a Union; these lines say nothing
# about the user's mistake.
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>",
          "Given value type:", "Given value:")  # fmt: skip


def one_line(error: BaseException) -> str:
    """The gist of an error message on one line."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line.lstrip("- ") for line in lines if line and not line.startswith(_NOISE)]
    return " ".join(kept) or type(error).__name__


class BrainTumorCLI(LightningCLI):
    """LightningCLI without subcommands (`python train.py --config cfg.yaml`) plus `--ckpt_path`."""

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            auto_configure_optimizers=False,  # the modules build their own (lightning_modules.optim)
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # raise, so run_with_clean_errors can shorten it
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None,
            help="Checkpoint to resume training from (train.py) or to evaluate (evaluate.py); 'last' resumes the newest.",
        )  # fmt: skip
        # The image channels are the data's decision; the model follows.
        parser.link_arguments("data.channels", "model.init_args.in_channels", apply_on="instantiate")


def run_with_clean_errors(main: Callable[[], None]) -> None:
    """Bad input becomes one `error:` line naming the file or key, not a traceback
    (set BRAIN_TUMOR_TRACEBACK=1 to see it)."""
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("BRAIN_TUMOR_TRACEBACK"):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
