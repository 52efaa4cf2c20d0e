"""Inference-only model files: a trained network's weights in safetensors, with everything
inference needs in the file's own JSON header.

A training checkpoint carries the optimizer state (about 3x the weights) and is a pickle; a model
file is the weights alone (parameters optionally in float16, buffers such as BatchNorm statistics,
the calibration temperature and the mask threshold always in float32), the module's and the
datamodule's arguments (architecture, image size, channels, normalization), and the fingerprints
of the training images, so that evaluate.py can still leave out copies of them. It loads without
pickle. Read its header with any safetensors reader: `safe_open(path, "pt").metadata()`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lightning_modules.checkpoints import CheckpointError, saved_class_name

MODEL_FILE_SUFFIX = ".safetensors"
HEADER_KEY = "brain_tumor_mri"
FORMAT_VERSION = 1
FINGERPRINTS_PREFIX = "training_fingerprints."


def is_model_file(path: str | Path) -> bool:
    return Path(path).suffix == MODEL_FILE_SUFFIX


def write_model_file(
    module: torch.nn.Module, hparams: dict, data_hparams: dict, data_state: dict, path: str | Path, half: bool = True
) -> Path:
    """Write `module`'s weights (parameters in float16 when `half`) and what inference needs to `path`."""
    parameters = {name for name, _ in module.named_parameters()}
    tensors = {}
    for name, value in module.state_dict().items():
        value = value.detach().cpu()
        tensors[name] = (
            value.half() if half and name in parameters and value.is_floating_point() else value
        ).contiguous()
    fingerprints = data_state.get("training_fingerprints") or {}
    tensors |= {FINGERPRINTS_PREFIX + key: value.contiguous() for key, value in fingerprints.items()}
    header = {
        "format_version": FORMAT_VERSION,
        "hyper_parameters": hparams,
        "datamodule_hyper_parameters": data_hparams,
        "parameters_dtype": "float16" if half else "float32",
    }
    path = Path(path)
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def read_model_file(path: str | Path) -> dict:
    """A model file's contents in the layout of a Lightning checkpoint (state_dict, hyper_parameters,
    datamodule_hyper_parameters, and the datamodule's state under its class name), float32 throughout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    if HEADER_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without this project's header; write one with export.py")
    header = json.loads(metadata[HEADER_KEY])
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer version of this project (format {header['format_version']})")
    fingerprints = {
        key.removeprefix(FINGERPRINTS_PREFIX): tensors.pop(key)
        for key in [key for key in tensors if key.startswith(FINGERPRINTS_PREFIX)]
    }
    state_dict = {key: value.float() if value.dtype == torch.float16 else value for key, value in tensors.items()}
    data_hparams = header["datamodule_hyper_parameters"]
    data_class = saved_class_name(data_hparams, "DataModule")
    return {
        "state_dict": state_dict,
        "hyper_parameters": header["hyper_parameters"],
        "datamodule_hyper_parameters": data_hparams,
        data_class: {"training_fingerprints": fingerprints} if fingerprints else {},
    }
