"""The command-line options every tool that runs trained models shares, spelled one way.

The scripts that are not a LightningCLI (predict.py, app.py, export.py, evaluate.py, scripts/) spell their
options in snake_case, as LightningCLI spells its own (`--ckpt_path`, `--print_config`); the spellings of
earlier releases (`--cls-ckpt`, `--output-dir`, `--data.root`) are still accepted for this release, each
with a one-line deprecation warning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda, cuda:1, ..."


def add_model_arguments(parser: argparse.ArgumentParser, bundled_default: bool = True) -> None:
    """--cls_ckpt, --seg_ckpt and --device: the models a tool runs, and where."""
    default = " (default: the models bundled in models/)" if bundled_default else ""
    parser.add_argument("--cls_ckpt", help=f"classifier: a checkpoint, run folder or model file{default}")
    parser.add_argument("--seg_ckpt", help=f"segmenter: a checkpoint, run folder or model file{default}")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args`, with an option's old spelling (kebab-case, or dotted as LightningCLI's) taken as
    its snake_case one and a deprecation warning for each."""
    known = {option for action in parser._actions for option in action.option_strings}  # noqa: SLF001 (argparse has no public list)
    rewritten = []
    for argument in sys.argv[1:] if argv is None else argv:
        name, equals, value = argument.partition("=")
        snake = "--" + name[2:].replace("-", "_").replace(".", "_")
        if name.startswith("--") and name not in known and snake in known:
            print(
                f"warning: {name} is deprecated; use {snake} (the old spelling goes in the next release)",
                file=sys.stderr,
            )
            argument = snake + equals + value
        rewritten.append(argument)
    return parser.parse_args(rewritten)
