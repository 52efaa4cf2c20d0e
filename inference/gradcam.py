"""Grad-CAM (Selvaraju et al., 2017): where a net looked, for CNNs and transformers alike."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_modules.models import MeanOfLogits


def as_feature_grid(net: torch.nn.Module, features: torch.Tensor) -> torch.Tensor | None:
    """The last features of a timm-style classifier network as (N, C, h, w), whatever their layout:
    NCHW (CNNs), NHWC (timm's `output_fmt`, e.g. Swin) or transformer tokens (N, prefix + h*w, C)
    with `num_prefix_tokens` class/register tokens first. None when they have no spatial grid."""
    if features.ndim == 4:
        return features.permute(0, 3, 1, 2) if getattr(net, "output_fmt", "NCHW") == "NHWC" else features
    if features.ndim == 3:
        tokens = features[:, getattr(net, "num_prefix_tokens", 0) :]
        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        height, width = grid if grid and grid[0] * grid[1] == tokens.shape[1] else (math.isqrt(tokens.shape[1]),) * 2
        if height * width == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(len(tokens), -1, height, width)
    return None


def grad_cam_layer(net: torch.nn.Module) -> torch.nn.Module | None:
    """Where Grad-CAM reads a transformer that classifies from its class token: the input
    norm of the last block (as pytorch-grad-cam advises), since after that block the patch
    tokens no longer reach the prediction and get no gradient. None: the features
    `forward_features` returns, which every other timm-style network classifies from."""
    blocks = getattr(net, "blocks", None)
    if getattr(net, "global_pool", None) == "token" and blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1
    return None


def grad_cam(net: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class logits and a Grad-CAM map (N, h, w in [0, 1]) for each predicted class.

    Works on any network with timm's `forward_features` / `forward_head` split, CNN or
    transformer: the map weights the last feature maps by the mean gradient of the predicted
    logit. Of an ensemble (models.MeanOfLogits), the last feature maps of all its members, on the
    first's grid. The maps are None for a network whose features have no spatial layout."""
    members = list(net.members) if isinstance(net, MeanOfLogits) else [net]
    with torch.enable_grad():
        logits, features = zip(*(_logits_and_features(member, batch) for member in members))
        logits = torch.stack(logits).mean(dim=0)
        predicted = logits.argmax(dim=1)
        gradients = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), features)
    cam = None
    for member, member_features, member_gradients in zip(members, features, gradients):
        grid, grid_gradients = (
            as_feature_grid(member, member_features.detach()),
            as_feature_grid(member, member_gradients),
        )
        if grid is None:
            return logits.detach(), None
        weighted = (grid_gradients.mean(dim=(2, 3), keepdim=True) * grid).sum(dim=1, keepdim=True)
        cam = weighted if cam is None else cam + F.interpolate(weighted, size=cam.shape[-2:], mode="bilinear")
    cam = F.relu(cam[:, 0])
    cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8)[:, None, None]
    return logits.detach(), cam.detach()


def _logits_and_features(net: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One network's logits and the features Grad-CAM reads (grad_cam_layer), in one graph."""
    layer = grad_cam_layer(net)
    if layer is None:
        features = net.forward_features(batch).detach().requires_grad_(True)
        return net.forward_head(features), features
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = net(batch.detach().requires_grad_(True))  # so the hooked output is in the graph
    finally:
        handle.remove()
    return logits, captured[-1]
