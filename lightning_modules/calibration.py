"""Temperature scaling (Guo et al., 2017): the classifier's own calibration, fitted on its
validation logits after every validation epoch and stored in its checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE_RANGE = (0.2, 10.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T that minimizes the negative log-likelihood of softmax(logits / T).

    One parameter, fitted on held-out (validation) logits: it changes how sure the model says it
    is, never what it predicts. Optimized in log space, so T stays positive, and kept within
    TEMPERATURE_RANGE: on a validation set without a single error the likelihood keeps rising as
    T falls towards 0, which would call every later prediction certain. (The likelihood is convex
    in 1/T, so the bounded optimum is the unbounded one, clipped.)"""
    # Called at the end of validation epochs, which Trainer.validate runs in inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        logits, labels = logits.detach().double(), labels.detach().clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return min(max(float(log_t.detach().exp()), low), high)
