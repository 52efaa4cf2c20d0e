"""How unlike the training data an input is: the Mahalanobis distance of its pooled features to
the nearest class (Lee et al., 2018), with one covariance shared by the classes.

Fitted on validation features, with the covariance shrunk halfway towards a multiple of the
identity, because a few hundred images cannot pin down a full covariance of hundreds of
feature dimensions. Measured on the SARTAJ speed-run model (BENCHMARKS.md): random noise, blank,
photo-like and chest-X-ray-like inputs score above the validation split's 95th percentile almost
always, where the energy score of the logits (Liu et al., 2020) flagged none of the noise or
blank images, because a CNN's logits on them are large and confident."""

from __future__ import annotations

import torch

COVARIANCE_SHRINKAGE = 0.5


def fit_class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, shrinkage: float = COVARIANCE_SHRINKAGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (num_classes, C) and the precision matrix (C, C) of the shared covariance.
    A class without images keeps an infinitely distant mean, so it is never the nearest."""
    features = features.double()
    means = torch.full((num_classes, features.shape[1]), float("inf"), dtype=torch.float64)
    present = labels.unique()
    for label in present:
        means[label] = features[labels == label].mean(dim=0)
    centered = features - means[labels]
    covariance = centered.T @ centered / max(len(features) - len(present), 1)
    scale = covariance.diagonal().mean().clamp_min(1e-12)
    covariance = (1 - shrinkage) * covariance + shrinkage * scale * torch.eye(len(covariance), dtype=torch.float64)
    return means.float(), torch.linalg.inv(covariance).float()


def mahalanobis_to_nearest_class(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """min over classes of (f - mean_c)^T precision (f - mean_c), per row of `features`."""
    differences = features.float()[:, None, :] - means[None]  # (N, classes, C)
    distances = torch.einsum("ncd,de,nce->nc", differences, precision, differences)
    return torch.nan_to_num(distances, nan=float("inf")).min(dim=1).values
