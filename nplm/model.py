"""Model: Bengio et al.'s NPLM (2003) as in makemore part 2, with the lecture's parameter layout.

idx (B, block_size) -> C[idx] (B, block_size, n_embd) -> concat (B, block_size*n_embd)
-> @ W1 + b1 -> tanh (B, n_hidden) -> @ W2 + b2 = logits (B, vocab_size).

Weights are stored (fan_in, fan_out) and applied as `x @ W + b`, the lecture's exact arithmetic, so
that `init=lecture` draws the same tensors from the same generator in the same order.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nplm.config import ModelConfig

TANH_GAIN = 5 / 3  # torch.nn.init.calculate_gain("tanh")


class NPLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.block_size, self.vocab_size = cfg.block_size, vocab_size
        fan_in = cfg.block_size * cfg.n_embd
        self.C = nn.Parameter(torch.empty(vocab_size, cfg.n_embd))  # feature vector of each token
        self.W1 = nn.Parameter(torch.empty(fan_in, cfg.n_hidden))
        self.b1 = nn.Parameter(torch.empty(cfg.n_hidden))
        self.W2 = nn.Parameter(torch.empty(cfg.n_hidden, vocab_size))
        self.b2 = nn.Parameter(torch.empty(vocab_size))

    @torch.no_grad()
    def init_weights(self, scheme: str, generator: torch.Generator) -> None:
        """Draw every parameter from `generator` in the lecture's order: C, W1, b1, W2, b2.

        lecture: raw standard normal draws (the lecture's recipe, bit for bit).
        scaled: W1 by tanh gain / sqrt(fan_in) so tanh does not saturate; small b1; W2 x0.01 and
        b2 = 0 so the initial logits are near uniform and the first loss is near ln(vocab_size).
        """
        scale = {"lecture": (1.0, 1.0, 1.0, 1.0, 1.0),
                 "scaled": (1.0, TANH_GAIN / math.sqrt(self.W1.shape[0]), 0.01, 0.01, 0.0)}[scheme]
        for p, s in zip((self.C, self.W1, self.b1, self.W2, self.b2), scale):
            p.copy_(torch.randn(p.shape, generator=generator) * s)  # x * 1.0 is exact

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, block_size) int64 -> logits (B, vocab_size), and the mean cross-entropy if targets."""
        emb = self.C[idx]  # (B, block_size, n_embd)
        h = torch.tanh(emb.view(emb.shape[0], -1) @ self.W1 + self.b1)  # (B, n_hidden)
        logits = h @ self.W2 + self.b2  # (B, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def model_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live (its parameters, or for a count model its buffers)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
