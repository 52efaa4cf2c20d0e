"""Run folders and checkpoint files: where a run keeps them, how to find one, how to read one safely.

Every training run owns one folder, `<trainer.default_root_dir>/<task>/version_N/`, holding the
run's `config.yaml`, its TensorBoard events and `checkpoints/`:

- `best.ckpt`: the epoch with the best validation score;
- `last.ckpt`: the end of the newest finished epoch, rewritten after every epoch;
- `last-interrupted.ckpt`: where training stopped on Ctrl-C or an exception.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain Python data only,
so loading a checkpoint from elsewhere cannot run code hidden in it."""

from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from common.errors import UserError

BEST = "best.ckpt"
LAST = "last.ckpt"
INTERRUPTED = "last-interrupted.ckpt"
CHECKPOINTS_FOLDER = "checkpoints"


def run_folder_checkpoints(monitor: str, mode: str = "max") -> list[ModelCheckpoint]:
    """The checkpoints every run folder holds: BEST by `monitor`, LAST (the newest finished epoch,
    whether it improved or not) and INTERRUPTED (written on Ctrl-C or an exception)."""
    stem = lambda name: name.removesuffix(".ckpt")  # noqa: E731
    return [
        ModelCheckpoint(filename=stem(BEST), monitor=monitor, mode=mode, enable_version_counter=False),
        ModelCheckpoint(filename=stem(LAST), enable_version_counter=False),
        ModelCheckpoint(filename=stem(INTERRUPTED), every_n_epochs=0, save_on_exception=True),
    ]


class CheckpointError(UserError):
    """A checkpoint path that is missing, unreadable, unsafe or of the wrong kind."""


def class_at(class_path: str) -> type:
    """The class a config's or checkpoint's `class_path` names (jsonargparse resolves it so, but only
    through a private module)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise CheckpointError(f"{class_path}: no such class in this project") from None


def saved_class_name(hparams: dict, default: str = "") -> str:
    """The class name of saved hyperparameters' `_class_path` (what LightningCLI records), else `default`."""
    return str(hparams.get("_class_path", default)).rsplit(".", 1)[-1]


def saved_arguments(hparams: dict) -> dict:
    """Saved hyperparameters without LightningCLI's own entries (`_class_path`, `_instantiator`): the
    constructor's arguments."""
    return {key: value for key, value in hparams.items() if not key.startswith("_")}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents (tensors memory-mapped, so reading only its metadata is cheap)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # what torch.save writes; a truncated copy has lost its zip directory
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (another kind of file, or a truncated copy)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: it holds Python objects other than tensors and plain data, and loading those "
            f"could run code from the file ({str(error).splitlines()[-1].strip()})"
        ) from error
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: corrupt checkpoint ({str(error).splitlines()[0]})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it has no state_dict); train one with train.py")
    return checkpoint


def member_reference(path: str | Path) -> tuple[str, int | None]:
    """`PATH#K`: member K (from 0) of the ensemble at PATH; any other path: the whole model, None."""
    match = re.fullmatch(r"(.+)#(\d+)", str(path))
    return (match[1], int(match[2])) if match else (str(path), None)


def run_folder_of(checkpoint: Path) -> Path | None:
    """`version_N/` for `version_N/checkpoints/x.ckpt`; None for a checkpoint kept elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_FOLDER else None


def newest_checkpoint(run_folders: list[Path]) -> Path | None:
    """The most recently written `last.ckpt` or `last-interrupted.ckpt` of these runs."""
    candidates = [run / CHECKPOINTS_FOLDER / name for run in run_folders for name in (LAST, INTERRUPTED)]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime) if existing else None


def find_checkpoint(path: str | Path, name: str = BEST) -> Path:
    """A checkpoint file as given, or checkpoints/`name` of a run folder (or `name` in a checkpoints folder)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / CHECKPOINTS_FOLDER / name, path / name):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: a folder without {CHECKPOINTS_FOLDER}/{name}; give a run folder or a .ckpt file")


def find_resume_checkpoint(path: str, task_folder: Path | None) -> Path:
    """What `--ckpt_path` resumes from: "last" is the newest run under `task_folder`, a run folder
    its newest checkpoint, and a file itself."""
    if path == "last":
        runs = sorted(task_folder.glob("version_*")) if task_folder else []
        found = newest_checkpoint(runs)
        if found is None:
            raise CheckpointError(f"--ckpt_path last: no run with a {LAST} or {INTERRUPTED} under {task_folder}")
        return found
    if Path(path).is_dir():
        found = newest_checkpoint([Path(path)])
        if found is None:
            raise CheckpointError(f"{path}: no {CHECKPOINTS_FOLDER}/{LAST} or {INTERRUPTED} to resume from")
        return found
    return Path(path)
