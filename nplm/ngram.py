"""Count baseline: an interpolated modified Kneser-Ney character n-gram model (Chen & Goodman 1999).

The comparison Bengio et al. made, in the same units (nats per character) on the same splits, and
behind the same interface as the NPLM (`forward(idx, targets=None) -> (logits, loss)`, where the
logits are log-probabilities), so evaluation, sampling, checkpoints and sweeps treat it alike.

P_k(w | h) for a context h of k-1 characters:
    (max(c_k(h w) - D_k(c), 0) + gamma_k(h) * P_{k-1}(w | h')) / c_k(h),   h' = h without its first char,
with gamma_k(h) = D_k1 N1(h .) + D_k2 N2(h .) + D_k3 N3+(h .), and P_{k-1} used alone where c_k(h) = 0.
The highest order counts occurrences; lower orders count distinct left extensions (continuation
counts). P_0 is uniform over the vocabulary. Discounts come from the count-of-counts of each order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nplm.config import ConfigError


def check_order(order: int, vocab_size: int) -> None:
    """ConfigError if an n-gram of this order over this vocabulary does not fit one int64 key (base V)."""
    if vocab_size ** order >= 2 ** 63:
        raise ConfigError(f"a {order}-gram over {vocab_size:,} tokens does not fit the count model's 64-bit keys; "
                          f"use model.order <= {max_order(vocab_size)} (or a smaller vocabulary: data.min_count, "
                          "data.max_vocab)")


def max_order(vocab_size: int) -> int:
    """The highest order whose n-grams fit one int64 key (base vocab_size)."""
    n = 1
    while vocab_size ** (n + 1) < 2 ** 63:
        n += 1
    return n


def _pack(ctx: torch.Tensor, V: int) -> torch.Tensor:
    """Integer key of each row of ctx (N, k), base V; k = 0 gives 0."""
    key = torch.zeros(len(ctx), dtype=torch.long)
    for j in range(ctx.shape[1]):
        key = key * V + ctx[:, j]
    return key


def _lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[i] where keys[i] == query (keys sorted), else 0."""
    if len(keys) == 0:
        return torch.zeros(len(query), dtype=values.dtype)
    pos = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == query, values[pos], torch.zeros((), dtype=values.dtype))


class NGram(nn.Module):
    """Order-n character model; reads the last n-1 columns of idx. Fit with `fit(X, Y)`."""

    def __init__(self, order: int, vocab_size: int, block_size: int):
        super().__init__()
        assert 1 <= order <= block_size + 1
        self.order, self.vocab_size, self.block_size = order, vocab_size, block_size
        self.fitted = False

    @torch.no_grad()
    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> "NGram":
        """Count every n-gram of the training examples and derive the discounts."""
        V, X, Y = self.vocab_size, X.cpu(), Y.cpu()
        check_order(self.order, V)
        grams = torch.cat([X[:, X.shape[1] - (self.order - 1):] if self.order > 1 else X[:, :0],
                           Y[:, None]], dim=1)  # (N, order): context then next char
        keys, counts = torch.unique(_pack(grams, V), return_counts=True)
        self._store(self.order, keys, counts.double())
        for k in range(self.order - 1, 0, -1):
            # continuation counts: how many distinct (k+1)-grams (unique keys) end in each k-gram
            keys, counts = torch.unique(keys % V ** k, return_counts=True)
            self._store(k, keys, counts.double())
        self.fitted = True
        return self

    def _store(self, k: int, keys: torch.Tensor, counts: torch.Tensor) -> None:
        V = self.vocab_size
        n = [(counts == i).sum().item() for i in (1, 2, 3, 4)]
        Y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.0
        D = torch.tensor([0.0] + [max(0.0, min(float(i), i - (i + 1) * Y * n[i] / n[i - 1])) if n[i - 1] else 0.5
                                  for i in (1, 2, 3)], dtype=torch.float64)  # D[c] for c = 1, 2, 3+
        ctx = keys // V
        ctx_keys, inverse = torch.unique(ctx, return_inverse=True)
        ctx_total = torch.zeros(len(ctx_keys), dtype=torch.float64).index_add_(0, inverse, counts)
        ctx_gamma = torch.zeros(len(ctx_keys), dtype=torch.float64)
        ctx_gamma.index_add_(0, inverse, D[counts.long().clamp(max=3)])
        for name, value in (("keys", keys), ("counts", counts), ("discounts", D), ("ctx_keys", ctx_keys),
                            ("ctx_total", ctx_total), ("ctx_gamma", ctx_gamma)):
            self.register_buffer(f"o{k}_{name}", value)

    def log_prob(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """log P(w | last order-1 characters of idx) for each row: (N,) float64."""
        V = self.vocab_size
        p = torch.full((len(w),), 1.0 / V, dtype=torch.float64)
        for k in range(1, self.order + 1):
            ctx = _pack(idx[:, idx.shape[1] - (k - 1):] if k > 1 else idx[:, :0], V)
            b = lambda name: getattr(self, f"o{k}_{name}")  # noqa: E731
            c = _lookup(b("keys"), b("counts"), ctx * V + w)
            total = _lookup(b("ctx_keys"), b("ctx_total"), ctx)
            gamma = _lookup(b("ctx_keys"), b("ctx_gamma"), ctx)
            discounted = (c - b("discounts")[c.long().clamp(max=3)]).clamp(min=0)
            p = torch.where(total > 0, (discounted + gamma * p) / total.clamp(min=1), p)
        return p.log()

    def target_log_prob(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(target | context) of each row, float64: what evaluation needs, without scoring all
        vocab_size candidates (as forward does), which matters at word level."""
        return self.log_prob(idx.cpu(), targets.cpu())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, block_size) -> log-probabilities (B, vocab_size) as logits, and the mean NLL."""
        idx = idx.cpu()
        B, V = len(idx), self.vocab_size
        w = torch.arange(V).repeat(B)  # every candidate next char for every row
        logits = self.log_prob(idx.repeat_interleave(V, dim=0), w).view(B, V).float()
        loss = None if targets is None else F.cross_entropy(logits, targets.cpu())
        return logits, loss

    def num_params(self) -> int:
        """The counts it stores (one per distinct n-gram of each order): its size, for comparison."""
        return sum(len(getattr(self, f"o{k}_keys")) for k in range(1, self.order + 1)) if self.fitted else 0

    def load_counts(self, state: dict) -> "NGram":
        """Rebuild from a saved state_dict (buffer sizes depend on the data)."""
        for name, value in state.items():
            self.register_buffer(name, value)
        self.fitted = True
        return self
