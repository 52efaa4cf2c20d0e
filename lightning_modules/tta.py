"""Test-time augmentation: a model's outputs averaged over flipped views of its input."""

from __future__ import annotations

import torch

# Test-time augmentation: the views a model is run on, each a flip of the image's (height, width)
# axes; outputs with a spatial layout (segmentation logits) are flipped back before the mean.
TTA_VIEWS: dict[str, list[tuple[int, ...]]] = {
    "none": [()],
    "hflip": [(), (3,)],
    "flips": [(), (3,), (2,), (2, 3)],
}


def run_with_tta(
    module: torch.nn.Module, images: torch.Tensor, tta: str = "none", unflipped: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean of the module's outputs (logits) over the views of `tta` (a key of TTA_VIEWS);
    `unflipped`: its output on the images as they are, when the caller has it already."""
    outputs = []
    for dims in TTA_VIEWS[tta]:
        if not dims and unflipped is not None:
            outputs.append(unflipped)
            continue
        output = module(images.flip(dims) if dims else images)
        outputs.append(output.flip(dims) if dims and output.ndim == 4 else output)
    return torch.stack(outputs).mean(dim=0)
