"""Count baseline: an interpolated modified Kneser-Ney character n-gram model (Chen & Goodman 1999).

The comparison Bengio et al. made, in the same units (nats per character) on the same splits, and
behind the same interface as the NPLM (`forward(idx, targets=None) -> (logits, loss)`, where the
logits are log-probabilities), so evaluation, sampling, checkpoints and sweeps treat it alike.

P_k(w | h) for a context h of k-1 characters:
    (max(c_k(h w) - D_k(c), 0) + gamma_k(h) * P_{k-1}(w | h')) / c_k(h),   h' = h without its first char,
with gamma_k(h) = D_k1 N1(h .) + D_k2 N2(h .) + D_k3 N3+(h .), and P_{k-1} used alone where c_k(h) = 0.
The highest order counts occurrences; lower orders count distinct left extensions (continuation
counts). P_0 is uniform over the vocabulary. Discounts come from the count-of-counts of each order.

Keys: each j-gram of the training data (every window of every example, j < order) gets an id, its
place in the sorted table of (id of its first j-1 tokens) * V + its last token; an n-gram's key is
then (id of its context) * V + its next token. Keys grow with the number of distinct n-grams, not
with V ** order, so any order fits any vocabulary (a 5-gram over 16,383 words too). Counts saved
before these tables existed (packed base V) still load and score as they did.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F



def _pack(ctx: torch.Tensor, V: int) -> torch.Tensor:
    """Integer key of each row of ctx (N, k), base V; k = 0 gives 0. The keys of counts saved before
    the id tables (they fit int64 only while V ** order does)."""
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

    targets_only = True  # scores a target without the whole vocabulary's logits: evaluated in large chunks

    @torch.no_grad()
    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> "NGram":
        """Number the j-grams of the training examples, count every n-gram, derive the discounts."""
        V, X, Y = self.vocab_size, X.cpu(), Y.cpu()
        full = torch.cat([X, Y[:, None]], dim=1)  # each example: its context, then its next token (N, W)
        N, W = full.shape
        ids = {0: torch.zeros(N, W + 1, dtype=torch.long)}  # ids[j][:, i]: the j-gram ending at position i + j - 1
        for j in range(1, self.order):
            keys = ids[j - 1][:, :W - j + 1] * V + full[:, j - 1:]  # (its first j-1 tokens' id) * V + its last
            table, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
            self.register_buffer(f"ids{j}", table)
            ids[j] = inverse.view(N, W - j + 1)
        self._tables = True
        # the key of each example's k-gram (the k tokens ending at its next token), k = 1 .. order
        ends = {k: ids[k - 1][:, -2 if k > 1 else 0] * V + full[:, -1] for k in range(1, self.order + 1)}
        keys, counts = torch.unique(ends[self.order], return_counts=True)
        self._store(self.order, keys, counts.double())
        for k in range(self.order - 1, 0, -1):  # continuation counts: distinct (k+1)-grams ending in each k-gram
            parents, inverse = torch.unique(ends[k + 1], return_inverse=True)
            suffix = torch.empty(len(parents), dtype=torch.long).index_put_((inverse,), ends[k])
            keys, counts = torch.unique(suffix, return_counts=True)
            self._store(k, keys, counts.double())
        self.fitted = True
        return self

    def _ids(self, rows: torch.Tensor) -> torch.Tensor:
        """The id of each row (N, j) as a j-gram of the training data (-1: never seen); with counts
        saved before the id tables, its base-V key."""
        if not getattr(self, "_tables", False):
            return _pack(rows, self.vocab_size)
        ids = torch.zeros(len(rows), dtype=torch.long)
        for j in range(rows.shape[1]):
            table = getattr(self, f"ids{j + 1}")
            key = ids * self.vocab_size + rows[:, j]  # negative where a prefix was never seen
            pos = torch.searchsorted(table, key).clamp(max=len(table) - 1)
            ids = torch.where((ids >= 0) & (table[pos] == key), pos, torch.full_like(pos, -1))
        return ids



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
            ctx = self._ids(idx[:, idx.shape[1] - (k - 1):] if k > 1 else idx[:, :0])
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
        self._tables = self.order == 1 or "ids1" in state  # else counts saved with base-V keys
        self.fitted = True
        return self
