"""The paper's mixture: the network interpolated with a Kneser-Ney count model (Bengio et al. 2003,
section 4: "mixture of the neural network with a trigram").

    P(w | context) = weight * P_nplm(w | context) + (1 - weight) * P_ngram(w | context)

`model.mix_order=N` builds the N-gram from the training split after training and fits `weight` on
the val split (the mixture's log-likelihood is concave in the weight: its maximum is found by
bisection on the derivative). The mixture then is the run's model: its losses are reported, it is sampled and saved.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nplm.evaluate import chunk_rows
from nplm.model import NPLM
from nplm.ngram import NGram

log = logging.getLogger("nplm")


class Mixture(nn.Module):
    def __init__(self, nplm: NPLM, ngram: NGram, weight: float):
        super().__init__()
        self.nplm, self.ngram = nplm, ngram
        self.block_size, self.vocab_size = nplm.block_size, nplm.vocab_size
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float64))

    @property
    def C(self) -> torch.Tensor:  # the network's embeddings, for the embedding plot
        return self.nplm.C

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, block_size) -> mixed log-probabilities (B, vocab_size) as logits, and the mean NLL."""
        logp_nn = F.log_softmax(self.nplm(idx)[0].double(), dim=-1)
        logp_ng = self.ngram(idx)[0].to(logp_nn.device).double()  # already log-probabilities
        w = self.weight.item()
        logits = torch.logaddexp(logp_nn + math.log(w), logp_ng + math.log1p(-w)) if 0 < w < 1 \
            else (logp_nn if w >= 1 else logp_ng)
        logits = logits.float()
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def target_log_prob(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log(w P_net(target) + (1 - w) P_ngram(target)) of each row, float64 (for evaluation)."""
        logp_nn = _network_log_prob(self.nplm, idx, targets)
        logp_ng = self.ngram.target_log_prob(idx, targets)
        w = self.weight.item()
        if 0 < w < 1:
            return torch.logaddexp(logp_nn + math.log(w), logp_ng + math.log1p(-w))
        return logp_nn if w >= 1 else logp_ng

    def num_params(self) -> int:
        """The network's parameters (the n-gram's counts are reported apart, as ngram_counts)."""
        return self.nplm.num_params()


def _network_log_prob(nplm: NPLM, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log P_net(target | context) of each row, float64 on the CPU: the target's logit less the
    log-sum-exp, without a (B, vocab_size) float64 copy of the logits."""
    if getattr(nplm, "adaptive", None) is not None:  # only the targets' clusters
        return nplm.adaptive_log_prob(idx, targets).double().cpu()
    logits = nplm(idx)[0]
    return (logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)).double().cpu()


@torch.inference_mode()
def part_log_probs(nplm: NPLM, ngram: NGram, X: torch.Tensor, Y: torch.Tensor, chunk: int = 4096
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(target | context) of each row of (X, Y) under the network and under the count model
    (float64, on the CPU): all that fitting the weight and reporting the two parts need."""
    was_training = nplm.training
    nplm.eval()
    lp_nn, lp_ng = [], []
    chunk = chunk_rows(chunk, nplm.vocab_size)
    for i in range(0, len(X), chunk):
        x, y = X[i:i + chunk], Y[i:i + chunk]
        lp_nn.append(_network_log_prob(nplm, x, y))
        lp_ng.append(ngram.log_prob(x.cpu(), y.cpu()))
    nplm.train(was_training)
    return torch.cat(lp_nn), torch.cat(lp_ng)


def best_weight(lp_nn: torch.Tensor, lp_ng: torch.Tensor) -> float:
    """The network's weight in [0, 1] that maximises the mixture's mean log-likelihood of rows whose
    log-probabilities under the two parts are lp_nn and lp_ng."""
    a, b = lp_nn.exp(), lp_ng.exp()
    # The mean log-likelihood, mean(log(w a + (1 - w) b)), is concave in w: its derivative
    # mean((a - b) / (w a + (1 - w) b)) falls as w grows. The maximum is where it crosses zero.
    slope = lambda w: ((a - b) / (w * a + (1 - w) * b).clamp(min=1e-300)).mean().item()  # noqa: E731
    if slope(0.0) <= 0:
        return 0.0
    if slope(1.0) >= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(50):  # bisection: 2^-50, exact in float64 terms
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def fit_mixture(model: NPLM, order: int, X: dict[str, torch.Tensor], Y: dict[str, torch.Tensor],
                chunk: int) -> tuple[Mixture, dict]:
    """model.mix_order: the trained network mixed with a Kneser-Ney `order`-gram built from the training
    split (X, Y by split), the network's weight fitted on val. Returns it and what the summary records."""
    ngram = NGram(order, model.vocab_size, model.block_size).fit(X["train"], Y["train"])
    lp_nn, lp_ng = part_log_probs(model, ngram, X["val"], Y["val"], chunk)  # one pass: the weight and both parts
    weight, nplm_val, ngram_val = best_weight(lp_nn, lp_ng), -lp_nn.mean().item(), -lp_ng.mean().item()
    log.info("mixture: %.3f x network (val %.4f) + %.3f x Kneser-Ney %d-gram (val %.4f, %s counts), "
             "weight fitted on val", weight, nplm_val, 1 - weight, order, ngram_val, f"{ngram.num_params():,}")
    return Mixture(model, ngram, weight), {"mix_order": order, "mix_weight": weight, "nplm_val_loss": nplm_val,
                                           "ngram_val_loss": ngram_val, "ngram_counts": ngram.num_params()}
