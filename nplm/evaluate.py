"""Evaluation: the mean cross-entropy (nats per character, or per word) of a whole split, in chunks.

Chunks of `chunk` rows under inference mode keep peak memory flat and run faster than one pass
over the whole split (REFERENCE.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nplm.model import model_device


@torch.inference_mode()
def split_loss(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, chunk: int = 4096) -> float:
    """Mean cross-entropy of model on all of (X, Y); X (N, block_size), Y (N,) on any device."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(X), chunk):
        x, y = X[i:i + chunk].to(device), Y[i:i + chunk].to(device)
        if hasattr(model, "target_log_prob"):  # count models and mixtures: the target's probability only
            total -= model.target_log_prob(x, y).sum().to(device)
        else:
            logits, _ = model(x)
            total += F.cross_entropy(logits, y, reduction="sum").double()
    model.train(was_training)
    return (total / len(X)).item()


def perplexity(loss: float) -> float:
    """exp(loss): the loss in nats per token as perplexity (inf past what a float holds)."""
    return math.exp(loss) if loss < 700 else math.inf
