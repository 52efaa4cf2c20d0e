"""A trained model loaded for inference from a checkpoint, a run folder or a model file, with the
preprocessing and data settings it was trained with.

Preprocessing (image size, channels, normalization) is read from the checkpoint's saved
datamodule hyperparameters, so inference always matches how the model was trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch

from datamodules.base import CachedDataModule
from datamodules.fingerprints import Fingerprints
from datamodules.images import resize_square
from datamodules.transforms import build_transform
from lightning_modules.checkpoints import (
    CheckpointError,
    class_at,
    find_checkpoint,
    read_checkpoint,
    saved_arguments,
    saved_class_name,
)
from lightning_modules.model_file import is_model_file, read_model_file


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" is the GPU when there is one; anything else is passed to torch ("cpu", "cuda:1")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# Datamodule settings that, with the same images, fix the validation split.
SPLIT_SETTINGS = ("val_fraction", "seed", "duplicates", "max_phash_distance", "near_copies_join_patients")
# The split settings of files saved before a setting existed: what the code did then, so that a saved model's
# validation split is re-derived as it trained (its card's numbers, evaluate.py --own_split).
SPLIT_SETTINGS_OF_OLDER_FILES = {"near_copies_join_patients": True}

# What a saved `_class_path` may name: the project's task modules and datamodules, found by their class path
# as the CLI finds them, so that loading knows no task by name.
PROJECT_PACKAGES = {L.LightningModule: "lightning_modules", L.LightningDataModule: "datamodules"}


def saved_class(hparams: dict, kind: type, source: str | Path) -> type | None:
    """The project class (of `kind`) that saved hyperparameters name; None when they name none."""
    class_path = hparams.get("_class_path")
    if not class_path:
        return None
    package = PROJECT_PACKAGES[kind]
    found = class_at(class_path) if class_path.split(".")[0] == package else None
    if not (isinstance(found, type) and issubclass(found, kind)):
        raise CheckpointError(f"{source}: not a checkpoint of this project's models (class '{class_path}')")
    return found


@dataclass
class TrainedModel:
    """A task module in eval mode with the preprocessing and data settings it was trained with."""

    module: L.LightningModule  # a lightning_modules.base.TaskModule
    image_size: int
    channels: int
    checkpoint: str
    data_hparams: dict = field(default_factory=dict)  # the training datamodule's arguments and class
    data_state: dict = field(default_factory=dict)  # what that datamodule saved (next epoch, fingerprints)

    def __post_init__(self) -> None:
        # The layout training runs in (TaskModule.setup): on CPU a UNet's forward pass is then about 1.3x
        # faster, a classifier's a little (docs/studies/inference_latency.md).
        self.module.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, path: str | Path, module_class: type[L.LightningModule] | None, device: torch.device) -> TrainedModel:
        """A checkpoint file, the best checkpoint of a run folder, or a model file (export.py) of
        `module_class` (None: of either task). Loading reads only the file: no pretrained weights, no network
        (see TaskModule.load_pretrained_weights)."""
        slim = is_model_file(path)
        path = Path(path) if slim else find_checkpoint(path)
        checkpoint = read_model_file(path) if slim else read_checkpoint(path)
        hparams = checkpoint.get("hyper_parameters", {})
        saved = saved_class(hparams, L.LightningModule, path)
        if module_class is None and saved is None:
            raise CheckpointError(f"{path}: not a checkpoint of this project's models (no saved class)")
        if saved is not None and module_class is not None and saved.__name__ != module_class.__name__:
            raise CheckpointError(f"{path}: a {saved.__name__} checkpoint, expected {module_class.__name__}")
        module_class = module_class or saved
        data = checkpoint.get("datamodule_hyper_parameters")
        if not data or "image_size" not in data:
            raise CheckpointError(
                f"{path}: no saved preprocessing (datamodule hyperparameters); train it with train.py"
            )
        data = {**SPLIT_SETTINGS_OF_OLDER_FILES, **data}
        data_state = next((v for k, v in checkpoint.items() if k.endswith("DataModule") and isinstance(v, dict)), {})
        if checkpoint.get("pretraining_fingerprints"):  # images its pretrained encoder saw count as seen too
            seen = [data_state.get("training_fingerprints"), checkpoint["pretraining_fingerprints"]]
            merged = Fingerprints.union([Fingerprints.from_state(state) for state in seen if state])
            data_state = {**data_state, "training_fingerprints": merged.to_state()}
        if slim:
            arguments = saved_arguments(checkpoint["hyper_parameters"])
            module = module_class(**arguments)
            module.on_load_checkpoint(checkpoint)  # fills in what older files lack, as for a checkpoint
            module.load_state_dict(checkpoint["state_dict"])
            module = module.to(device).eval()
        else:
            module = module_class.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        return cls(module, int(data["image_size"]), int(data.get("channels", 3)), str(path), dict(data), data_state)

    def datamodule(self, root: str | list[str] | None = None, **moved: str | list[str] | None) -> CachedDataModule:
        """The datamodule the model was trained with, with its arguments, on `root` if given (and other
        data folders that have moved, e.g. `negatives`)."""
        try:
            datamodule_class = saved_class(self.data_hparams, L.LightningDataModule, self.checkpoint)
        except CheckpointError:
            datamodule_class = None
        if datamodule_class is None:
            class_name = saved_class_name(self.data_hparams)
            raise CheckpointError(f"{self.checkpoint}: trained with an unknown datamodule '{class_name}'")
        arguments = saved_arguments(self.data_hparams)
        moved = {key: value for key, value in {"root": root, **moved}.items() if value}
        return datamodule_class(**{**arguments, **moved})

    @property
    def training_fingerprints(self) -> Fingerprints | None:
        """The images the model was trained or validated on, when the checkpoint records them."""
        state = self.data_state.get("training_fingerprints")
        return Fingerprints.from_state(state) if state else None

    def split_difference(self, datamodule: CachedDataModule) -> str | None:
        """How the data and validation split this model trained on differ from `datamodule`'s (set up):
        other images, or the same images split by other settings; None when they are the same."""
        fingerprints = self.training_fingerprints
        if fingerprints is None or not fingerprints.same_images(datamodule.training_fingerprints):
            return "trained or validated on other images than this run's"
        differences = [
            f"{key} {self.data_hparams.get(key)} (this run: {datamodule.hparams.get(key)})"
            for key in SPLIT_SETTINGS
            if self.data_hparams.get(key) != datamodule.hparams.get(key)
        ]
        return f"of another validation split: {', '.join(differences)}" if differences else None

    @property
    def device(self) -> torch.device:
        return self.module.device

    def batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded uint8 images of any size -> the normalized batch the model was trained on."""
        transform = build_transform([], self.channels, self.data_hparams.get("head_gray"))
        tensors = [transform(image=resize_square(image, self.image_size))["image"] for image in images]
        return torch.stack(tensors).to(self.device)
