"""How the tools run a trained model on batches, one rule for all of them (evaluate.py, predict.py, the web
page): float32 on a CPU, so that a result is the same on every CPU whatever its bf16 support; on a GPU, the
precision training picks there (bf16 where the GPU computes it natively, fp16 on older tensor-core GPUs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.precision import Hardware, fastest_precision

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def serving_precision(device_type: str) -> str:
    """Lightning's name for the precision the tools run a model in on a `device_type` device (see the module's
    docstring); scripts/recalibrate.py fits a model's post-processing in it, so that it holds as served."""
    if device_type == "cpu":
        return "32-true"
    return fastest_precision(device_type, Hardware.detect())[0]


def inference_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The context a model runs in on `device` (see the module's docstring)."""
    dtype = AUTOCAST_DTYPES.get(serving_precision(device.type))
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


@torch.no_grad()
def model_outputs(
    device: torch.device,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    run: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
) -> Iterator[tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor]]:
    """(`run`'s outputs on each batch of `dataset`, as float tensors on the CPU, the batch's targets), in order."""
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        with inference_precision(device):
            outputs = run(images.to(device))
        outputs = (
            tuple(output.float().cpu() for output in outputs) if isinstance(outputs, tuple) else outputs.float().cpu()
        )
        yield outputs, targets
