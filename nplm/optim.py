"""Optimisation: the optimiser (sgd | adamw) and the learning-rate schedule (constant | step | cosine)."""
from __future__ import annotations

import math
from decimal import Decimal

import torch

from nplm.config import OptimConfig


def make_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """Weight decay applies to the weight matrices only, not to the embedding table, the biases or the
    norms' gains, unless optim.decay_all."""
    decays = lambda name, p: o.decay_all or (p.dim() >= 2 and name != "C")  # noqa: E731  W's, direct
    decay = [p for name, p in model.named_parameters() if decays(name, p)]
    no_decay = [p for name, p in model.named_parameters() if not decays(name, p)]  # C, b's, norms
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return SGD(groups, lr=o.lr, momentum=o.momentum)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


class SGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay, rounding as the lecture's `p.data += -lr * p.grad` does.

    torch.optim.SGD fuses the update into `p.add_(grad, alpha=-lr)`, which rounds differently in the
    last bit; over 200k steps that drifts the lecture's losses by ~0.01. Here -lr * grad is rounded
    first, then added, so `experiment=lecture` matches the lecture bit for bit.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad if wd == 0 else p.grad + wd * p
                if momentum:
                    buf = self.state[p].get("momentum_buffer")
                    buf = d_p.clone() if buf is None else buf.mul_(momentum).add_(d_p)
                    self.state[p]["momentum_buffer"] = buf
                    d_p = buf
                p += -lr * d_p


def lr_at(step: int, o: OptimConfig, total_steps: int) -> float:
    """The learning rate for training step `step` (0-based) of `total_steps`."""
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "step":  # the lecture: 0.1, then x0.1 from step 100,000
        # in decimal, as written by hand: 0.1 x 0.1 is the lecture's 0.01, not 0.010000000000000002
        n = sum(step >= s for s in o.decay_steps)
        return float(Decimal(repr(o.lr)) * Decimal(repr(o.decay_factor)) ** n)
    if o.schedule == "onecycle":  # Smith's one-cycle: lr/25 up to lr (linear), then cosine to min_lr
        warmup = o.warmup_steps or int(0.3 * total_steps)
        if step < warmup:
            return o.lr / 25 + (o.lr - o.lr / 25) * step / warmup
        min_lr = o.min_lr or o.lr / 1e4
    else:  # cosine: linear warmup to lr ...
        warmup, min_lr = o.warmup_steps, o.min_lr
        if step < warmup:
            return o.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - 1 - warmup)  # ... then 0 -> 1
    return min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (o.lr - min_lr)
