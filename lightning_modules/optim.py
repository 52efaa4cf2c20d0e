"""Optimizer and learning-rate schedule factory shared by every task."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from timm.optim import create_optimizer_v2

OptimizerName = Literal["adam", "adamw", "adopt"]
DecayName = Literal["cosine", "linear"]


def create_optimizer(
    model: torch.nn.Module | Iterable[torch.nn.Parameter],
    name: OptimizerName = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """timm's factory: `adopt` is ADOPT (Taniguchi et al., 2024); the same base lr works for all three.

    timm leaves biases and norm weights out of weight decay, which is what AdamW wants."""
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay)


def warmup_decay_factor(step: int, total_steps: int, warmup_fraction: float, decay: DecayName) -> float:
    """Multiplier of the base lr: linear 0 -> 1 over the warmup, then cosine or linear 1 -> 0."""
    warmup_steps = max(1, round(warmup_fraction * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def create_warmup_decay_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.25,
    decay: DecayName = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; Lightning steps it natively, unlike timm's schedulers."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_decay_factor(step, total_steps, warmup_fraction, decay)
    )
