"""The classifier's loss for labels that allow several classes (common.labels).

For a slice known to hold "a tumour of unknown type", the likelihood is the summed probability of the
classes its label allows: -log(sum_{c in allowed} softmax(z)_c) = logsumexp(z[allowed]) taken from
logsumexp(z). With one allowed class it is the cross-entropy. Label smoothing mixes in the mean
-log p over all classes at weight `smoothing`, as `F.cross_entropy(label_smoothing=...)` does."""

from __future__ import annotations

import torch

from common.labels import allowed_classes

ALLOWED = torch.from_numpy(allowed_classes())  # (labels, classes)


def partial_label_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per-image loss (N,) of logits (N, C) against label indices (N,) of common.labels.LABELS."""
    logits = logits.float()
    allowed = ALLOWED.to(logits.device)[labels]
    log_total = logits.logsumexp(dim=1)
    log_allowed = logits.masked_fill(~allowed, float("-inf")).logsumexp(dim=1)
    loss = log_total - log_allowed
    if smoothing:
        loss = (1 - smoothing) * loss + smoothing * (log_total - logits.mean(dim=1))
    return loss


def mixed_partial_label_loss(
    logits: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, share: float, smoothing: float = 0.0
) -> torch.Tensor:
    """The mean loss of images blended from two (mixup, cutmix): `share` of it against the image's own label,
    the rest against its partner's. For one-class labels it equals the soft-target cross-entropy of the
    blended one-hot targets."""
    own, partner = (partial_label_loss(logits, targets, smoothing) for targets in (labels, partners))
    return (share * own + (1 - share) * partner).mean()
