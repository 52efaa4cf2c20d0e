"""The command line shared by train.py and evaluate.py: Lightning's own CLI.

Configs mirror constructor signatures (`class_path` + `init_args`), any key can be
overridden on the command line, and `--print_config` shows the resolved result."""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from common.errors import UserError, check_range
from lightning_modules.checkpoints import class_at
from lightning_modules.precision import Hardware, fastest_precision

# A mistake in a file or option the user gave; anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, ArgumentError)

# jsonargparse explains a bad key against every member of a Union; these lines say nothing
# about the user's mistake.
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "- Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
)


def one_line(error: BaseException) -> str:
    """The gist of an error message on one line."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_NOISE)]
    return " ".join(kept) or type(error).__name__


# What every run's Trainer starts from; a config holds only what its recipe changes. The run folder's
# checkpoints, Ctrl-C handling and the learning-rate log come with the task module (TaskModule.configure_callbacks).
TRAINER_DEFAULTS = {
    "default_root_dir": "runs",  # each run gets runs/<run name>/version_N/ with its config, events and checkpoints
    "log_every_n_steps": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "name": None
        },  # None: the task's run name (TaskModule.run_name); save_dir follows default_root_dir
    },
}


class BrainTumorCLI(LightningCLI):
    """LightningCLI without subcommands (`python train.py --config cfg.yaml`)."""

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=42,
            run=False,
            auto_configure_optimizers=False,  # the modules build their own (lightning_modules.optim)
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # raise, so run_with_clean_errors can shorten it
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The image channels are the data's decision; the model follows.
        parser.link_arguments("data.channels", "model.init_args.in_channels", apply_on="instantiate")
        # One option moves every output: the logger's folder is the run folder (lightning_modules.checkpoints),
        # and the checkpoints and config.yaml follow the logger.
        parser.link_arguments(
            "trainer.default_root_dir", "trainer.logger.init_args.save_dir", compute_fn=lambda root: root or "."
        )

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        logger_args = getattr(trainer.logger, "init_args", None)
        if logger_args is not None and "name" in logger_args and logger_args.name is None:
            model_class = class_at(self.config.model.class_path)
            logger_args.name = getattr(model_class, "run_name", "lightning_logs")
        for name in ("max_epochs", "min_epochs"):
            check_range(f"trainer.{name}", trainer.get(name), 1)
        if trainer.precision is None:  # the configs leave it to the machine; an explicit value wins
            trainer.precision, reason = fastest_precision(trainer.accelerator, Hardware.detect())
            rank_zero_info(f"Precision {trainer.precision}: {reason} (--trainer.precision overrides)")


def user_error_behind(error: BaseException) -> BaseException | None:
    """The user mistake that caused `error`: itself, or one it was explicitly raised from
    (jsonargparse re-raises what a constructor raised as its own ValueError)."""
    while error is not None:
        if isinstance(error, USER_ERRORS):
            return error
        error = error.__cause__
    return None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the tools print it: `warning: <message>`, without the source line that raised it."""
    return f"warning: {message}\n"


def run_with_clean_errors(main: Callable[[], None]) -> None:
    """Run a script's main: a user mistake becomes one `error:` line naming the file or key, not a
    traceback (set BRAIN_TUMOR_TRACEBACK=1 to see it); any other exception is a bug and shows its
    traceback. Warnings print as one `warning:` line each."""
    warnings.formatwarning = one_line_warning
    # Lightning's own deprecation inside its loops: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning cannot tell that the datamodules resume mid-epoch exactly (CachedDataModule.state_dict).
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    try:
        main()
    except Exception as error:
        user_error = user_error_behind(error)
        if user_error is None or os.environ.get("BRAIN_TUMOR_TRACEBACK"):
            raise
        print(f"error: {one_line(user_error)}", file=sys.stderr)
        sys.exit(2)
