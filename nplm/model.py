"""Model: Bengio et al.'s NPLM (2003) as in makemore part 2, with the lecture's parameter layout.

idx (B, block_size) -> C[idx] (B, block_size, n_embd) (-> word dropout, optional) -> concat x (B, block_size*n_embd)
-> n_layer x [ @ W + b -> norm (optional) -> tanh -> dropout (optional) ]  (B, n_hidden)
-> @ W_out + b_out (+ x @ W_direct, the paper's direct connections)
   (softmax_cutoffs: an adaptive softmax in place of W_out: log-probabilities, and while training only
   the loss, computed from the clusters of the minibatch's targets)
(+ maxent[row of the last k tokens] for k = 1 .. maxent_order, hashed n-gram direct connections)
= logits (B, vocab_size).

Weights are stored (fan_in, fan_out) and applied as `x @ W + b`, the lecture's exact arithmetic, so
that `init=lecture` draws the same tensors from the same generator in the same order as the lecture
(C, W1, b1, W2, b2 for one hidden layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nplm.config import ConfigError, ModelConfig

TANH_GAIN = 5 / 3  # torch.nn.init.calculate_gain("tanh")


class Linear(nn.Module):
    """x @ weight + bias, weight (fan_in, fan_out): the lecture's layout and arithmetic."""

    def __init__(self, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class MaxEnt(nn.Module):
    """Hashed n-gram direct connections: Mikolov et al. (2011)'s maximum-entropy part of RNNME.

    For each k = 1 .. order, the last k tokens of the context select one row of a table, a learned
    vector of vocab_size logits added to the network's: a log-linear n-gram model trained jointly
    with the network, which memorises frequent contexts exactly while the network generalises. An
    order with at most `buckets` possible contexts (vocab_size ** k) gives each its own row; a
    longer one hashes its contexts into `buckets` rows (collisions share a row). Rows start at
    zero and get sparse gradients: only the rows a minibatch used are updated (nplm/optim.py).
    """

    MAX_WEIGHTS = 50_000_000  # 200 MB of float32, 600 MB with AdamW's two moments

    def __init__(self, order: int, buckets: int, vocab_size: int):
        super().__init__()
        self.order, self.vocab_size = order, vocab_size
        self.rows = self.check(order, buckets, vocab_size)  # rows per order
        self.exact = [vocab_size ** k <= buckets for k in range(1, order + 1)]
        self.offsets = [sum(self.rows[:i]) for i in range(order)]
        self.weight = nn.Parameter(torch.zeros(sum(self.rows), vocab_size))

    @classmethod
    def check(cls, order: int, buckets: int, vocab_size: int) -> list[int]:
        """The table's rows per order, or ConfigError if it would hold more than MAX_WEIGHTS weights."""
        rows = [min(vocab_size ** k, buckets) for k in range(1, order + 1)]
        if sum(rows) * vocab_size > cls.MAX_WEIGHTS:
            raise ConfigError(
                f"model.maxent_order={order} with model.maxent_buckets={buckets} needs {sum(rows) * vocab_size:,} "
                f"weights (rows x vocab_size {vocab_size:,}), more than {cls.MAX_WEIGHTS:,}: set "
                f"model.maxent_buckets={max(1, cls.MAX_WEIGHTS // (vocab_size * order))} or less")
        return rows

    def index(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, block_size) -> the table row of each order (B, order)."""
        code, cols = torch.zeros(idx.shape[0], dtype=torch.int64, device=idx.device), []
        for k in range(1, self.order + 1):
            code = code * self.vocab_size + idx[:, -k]  # the last k tokens in base vocab_size (wraps: still a hash)
            row = code if self.exact[k - 1] else torch.remainder(code * 2654435761 + k, self.rows[k - 1])
            cols.append(row + self.offsets[k - 1])
        return torch.stack(cols, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.index(idx), self.weight, sparse=True).sum(1)  # (B, vocab_size)


class NPLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.block_size, self.vocab_size = cfg.block_size, vocab_size
        fan_in = cfg.block_size * cfg.n_embd
        self.C = nn.Parameter(torch.empty(vocab_size, cfg.n_embd))  # feature vector of each token
        # n_hidden = 0: no hidden layer, the output reads the features themselves (the paper's h = 0)
        widths = [fan_in] + ([cfg.n_hidden] * cfg.n_layer if cfg.n_hidden else [])
        self.hidden = nn.ModuleList(Linear(a, b) for a, b in zip(widths, widths[1:]))
        norm = {"none": lambda n: nn.Identity(), "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}[cfg.norm]
        self.norms = nn.ModuleList(norm(cfg.n_hidden) for _ in self.hidden)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.word_dropout = cfg.word_dropout
        cut = list(cfg.softmax_cutoffs)
        if cut and cut[-1] >= vocab_size:
            raise ConfigError(f"model.softmax_cutoffs={cut} must all be below vocab_size {vocab_size:,} (token ids "
                              "below each cutoff form a cluster; the last cluster runs to the vocabulary's end)")
        if cut and widths[-1] // cfg.softmax_div ** len(cut) < 1:
            raise ConfigError(f"model.softmax_div={cfg.softmax_div:g} leaves the last of {len(cut)} clusters no units "
                              f"(the output reads {widths[-1]}): lower it or give fewer model.softmax_cutoffs")
        self.out = None if cut else Linear(widths[-1], vocab_size)
        # Grave et al. (2017): the head scores the tokens below cutoffs[0] and one entry per further cluster;
        # cluster i's tokens through a projection to n_hidden / softmax_div ** (i + 1) units
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(widths[-1], vocab_size, cut, cfg.softmax_div, head_bias=True) \
            if cut else None
        self.direct = nn.Parameter(torch.zeros(fan_in, vocab_size)) if cfg.direct else None
        self.maxent = MaxEnt(cfg.maxent_order, cfg.maxent_buckets, vocab_size) if cfg.maxent_order else None

    @torch.no_grad()
    def init_weights(self, scheme: str, generator: torch.Generator) -> None:
        """Draw every weight from `generator` in the lecture's order: C, then each layer's W and b.

        lecture: raw standard normal draws (the lecture's recipe, bit for bit).
        scaled: hidden W by tanh gain / sqrt(fan_in) so tanh does not saturate; small biases; the
        output layer x0.01 and b_out = 0 so the initial logits are near uniform and the first loss
        is near ln(vocab_size). Norm layers start as identity; direct connections (both kinds) start at zero.
        An adaptive softmax's head and clusters' outputs are drawn as the output layer (scaled: the head's
        entry for each cluster starts at log(its size), so that every token starts near 1 / vocab_size),
        its projections as a hidden layer without the tanh gain.
        """
        lecture = scheme == "lecture"
        self.C.copy_(torch.randn(self.C.shape, generator=generator))
        for layer in self.hidden:
            gain = 1.0 if lecture else TANH_GAIN / math.sqrt(layer.weight.shape[0])
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * gain)  # x * 1.0 is exact
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * (1.0 if lecture else 0.01))
        if self.adaptive is None:
            self.out.weight.copy_(torch.randn(self.out.weight.shape, generator=generator) * (1.0 if lecture else 0.01))
            self.out.bias.copy_(torch.randn(self.out.bias.shape, generator=generator) * (1.0 if lecture else 0.0))
            return
        head = self.adaptive.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * (1.0 if lecture else 0.01))
        head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * (1.0 if lecture else 0.0))
        if not lecture:  # each cluster's entry at log(its size): every token starts near 1 / vocab_size
            edges = self.adaptive.cutoffs  # [cutoffs..., vocab_size]
            head.bias[edges[0]:] = torch.tensor([math.log(b - a) for a, b in zip(edges, edges[1:])])
        for proj, out in self.adaptive.tail:  # nn.Linear: weight (fan_out, fan_in)
            gain = 1.0 if lecture else 1 / math.sqrt(proj.weight.shape[1])
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * gain)
            out.weight.copy_(torch.randn(out.weight.shape, generator=generator) * (1.0 if lecture else 0.01))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, block_size) int64 -> logits (B, vocab_size), and the mean cross-entropy if targets.
        With an adaptive softmax the logits are log-probabilities, and while training with targets they
        are None: the loss alone is computed, from the targets' clusters (what makes it fast)."""
        x, h = self._features(idx)
        if self.adaptive is not None:
            if targets is not None and self.training:
                return None, self.adaptive(h, targets).loss
            logp = self.adaptive.log_prob(h)  # (B, vocab_size), every cluster
            return logp, None if targets is None else F.nll_loss(logp, targets)
        logits = self.out(h)  # (B, vocab_size)
        if self.direct is not None:
            logits = logits + x @ self.direct
        if self.maxent is not None:
            logits = logits + self.maxent(idx)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def _features(self, idx: torch.Tensor, noise: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The concatenated features x (B, block_size * n_embd) and what the output reads, h. Dropout and
        word dropout draw their masks from torch's global generator, or (the compiled step, nplm/step.py)
        read them from `noise`: uniform draws in [0, 1), "word" (B, block_size, 1) and "hidden" one
        (B, n_hidden) per layer; a unit is kept where its draw is at least the dropout probability."""
        emb, mask = self.C[idx], None  # (B, block_size, n_embd)
        if self.training and self.word_dropout > 0:  # one draw per context token: its whole feature vector
            mask = F.dropout(emb.new_ones(emb.shape[:2] + (1,)), self.word_dropout) if noise is None \
                else kept(noise["word"], self.word_dropout)
            emb = emb * mask
        x = emb.reshape(idx.shape[0], -1)
        h = x
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        factored = noise is not None and self.vocab_size < idx.shape[0] and x.shape[1] <= 128  # see _factored
        for i, (layer, norm) in enumerate(zip(self.hidden, self.norms)):
            h = torch.tanh(norm(self._factored(idx, mask) if i == 0 and factored else layer(h)))  # (B, n_hidden)
            h = self.dropout(h) if noise is None or not (self.training and p) else h * kept(noise["hidden"][i], p)
        return x, h

    def _factored(self, idx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The first hidden layer's x @ W + b, from each token's product with W's block for each context
        position, (C @ W_t)[idx[:, t]] summed over t (times word dropout's mask): block_size x vocab_size
        rows multiplied instead of batch x block_size: 10x less arithmetic for characters at batch 256, but
        its backward adds each row's gradient into place one by one. The compiled step (nplm/step.py)
        takes it where vocab_size < batch and the concatenated features are at most 128 wide: measured,
        the default recipe's step (80 wide) took 367 instead of 807 us, experiment=best's (256 wide)
        12.4 instead of 11.7 ms (one thread, AMD EPYC, 2026-12-07)."""
        T, (V, E), layer = idx.shape[1], self.C.shape, self.hidden[0]
        P = torch.bmm(self.C.expand(T, V, E), layer.weight.view(T, E, -1))  # (T, V, n_hidden)
        rows = P.reshape(T * V, -1)[idx + torch.arange(T, device=idx.device) * V]  # (B, T, n_hidden)
        return (rows if mask is None else rows * mask).sum(1) + layer.bias

    def step_loss(self, idx: torch.Tensor, targets: torch.Tensor, noise: dict,
                  extra_logits: torch.Tensor | None = None, caps: tuple[int, ...] | None = None) -> torch.Tensor:
        """The training loss of the compiled step (nplm/step.py): forward's, with every shape fixed by
        the batch's (torch.export needs them so): dropout masks from `noise`, an adaptive softmax's loss
        with each cluster computed for a fixed number of rows (`caps`, else for every row), the hashed
        n-gram logits given (`extra_logits`, (B, vocab_size): their table is updated outside autograd,
        only where used), and cross-entropy as logsumexp minus the target's logit (whose backward is
        softmax minus one-hot; F.cross_entropy's adds a sum over the vocabulary per row)."""
        x, h = self._features(idx, noise)
        if self.adaptive is not None:
            return -self._adaptive_target_log_prob(h, targets, caps).mean()
        logits = self.out(h)
        if self.direct is not None:
            logits = logits + x @ self.direct
        if extra_logits is not None:
            logits = logits + extra_logits
        return (logits.logsumexp(1) - logits.gather(1, targets[:, None]).squeeze(1)).mean()

    def _adaptive_target_log_prob(self, h: torch.Tensor, targets: torch.Tensor,
                                  caps: tuple[int, ...] | None = None) -> torch.Tensor:
        """log P(target) (B,) of the adaptive softmax, nn.AdaptiveLogSoftmaxWithLoss's arithmetic: the
        head's log-probability of the target (a shortlist token) or of its cluster, plus the target's
        log-probability within that cluster. Cluster i is computed for every row, or with `caps` for
        caps[i] rows: the rows whose targets fall in it, gathered (first_rows; the caller makes sure
        there are no more), as the plain path computes only those."""
        a = self.adaptive
        edges = a.cutoffs  # [cutoffs..., vocab_size]
        head = a.head(h)
        cluster = sum((targets >= c).long() for c in edges[:-1]) - 1  # -1: the shortlist
        head_index = torch.where(cluster < 0, targets, a.shortlist_size + cluster)
        logp = head.gather(1, head_index[:, None]).squeeze(1) - head.logsumexp(1)
        for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
            if caps is None:
                rows, used = slice(None), cluster == i
            else:
                rows, used = first_rows(cluster == i, caps[i])
            out = a.tail[i](h[rows])  # (rows, hi - lo)
            within = out.gather(1, (targets[rows] - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1) - out.logsumexp(1)
            within = torch.where(used, within, torch.zeros_like(within))
            logp = logp + within if caps is None else logp.index_add(0, rows, within)
        return logp

    def adaptive_log_prob(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """With an adaptive softmax: log P(target | context) of each row (B,), computing only the clusters
        the targets fall in (evaluation's fast path; the same numbers as the logits', within rounding)."""
        return self.adaptive(self._features(idx)[1], targets).output

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def sparse_params(self) -> list[nn.Parameter]:
        """Parameters whose gradients are sparse (the hashed n-gram table): updated only where used,
        left out of weight decay and of the weights' moving average."""
        return [self.maxent.weight] if self.maxent is not None else []


def first_rows(inside: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """In fixed shapes, the indices (cap,) of the rows where `inside` (B,) holds, in order, the rest
    row 0; and which of the cap slots hold one (the first inside.sum(), at most cap)."""
    B = len(inside)
    pos = inside.cumsum(0) - 1
    slot = torch.where(inside & (pos < cap), pos, cap)  # slot cap: every other row, then dropped
    rows = torch.zeros(cap + 1, dtype=torch.long, device=inside.device).scatter(
        0, slot, torch.arange(B, device=inside.device))[:cap]
    return rows, torch.arange(cap, device=inside.device) < inside.sum()


def kept(uniform: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's mask from uniform draws: 1 / (1 - p) where a draw is at least p (probability 1 - p), else 0."""
    return (uniform >= p).to(uniform.dtype) * (1 / (1 - p))


def make_model(cfg: ModelConfig, vocab_size: int, generator: torch.Generator) -> NPLM:
    """An NPLM with its weights drawn from `generator` as cfg.init says (one run, or each run of a group)."""
    model = NPLM(cfg, vocab_size)
    model.init_weights(cfg.init, generator)
    return model


def model_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live (its parameters, or for a count model its buffers)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
