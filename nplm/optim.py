"""Optimisation: the optimiser (sgd | adamw) and the learning-rate schedule (constant | step | cosine)."""
from __future__ import annotations

import math
from decimal import Decimal

import torch

from nplm.config import OptimConfig


def make_optimizer(model: torch.nn.Module, o: OptimConfig) -> Optimizer:
    """Weight decay applies to the weight matrices only, not to the embedding table, the biases or the
    norms' gains, unless optim.decay_all."""
    decays = lambda name, p: o.decay_all or (p.dim() >= 2 and name != "C")  # noqa: E731  W's, direct
    decay = [p for name, p in model.named_parameters() if decays(name, p)]
    no_decay = [p for name, p in model.named_parameters() if not decays(name, p)]  # C, b's, norms
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return SGD(groups, lr=o.lr, momentum=o.momentum)
    return AdamW(groups, lr=o.lr, betas=tuple(o.betas))


class Optimizer:
    """What the runner needs of torch.optim.Optimizer, in its state_dict format: param_groups (each
    with its own settings), per-parameter state, zero_grad, state_dict and load_state_dict.

    Not derived from torch.optim.Optimizer: its first use imports torch._dynamo, 1.2 to 1.9 s of
    start-up for every run and every sweep job, for a compiler this runner never uses.
    """

    def __init__(self, groups: list[dict], defaults: dict):
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            p.grad = None

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._params())}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                                  "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict) -> None:
        params = self._params()
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state is for different parameter groups")
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {params[int(i)]: {k: v.to(params[int(i)].device) if torch.is_tensor(v) and v.dim() else v
                                       for k, v in s.items()} for i, s in state_dict["state"].items()}


class SGD(Optimizer):
    """SGD with momentum and weight decay, rounding as the lecture's `p.data += -lr * p.grad` does.

    torch.optim.SGD fuses the update into `p.add_(grad, alpha=-lr)`, which rounds differently in the
    last bit; over 200k steps that drifts the lecture's losses by ~0.01. Here -lr * grad is rounded
    first, then added, so `experiment=lecture` matches the lecture bit for bit.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad if wd == 0 else p.grad + wd * p
                if momentum:
                    buf = self.state.setdefault(p, {}).get("momentum_buffer")
                    buf = d_p.clone() if buf is None else buf.mul_(momentum).add_(d_p)
                    self.state[p]["momentum_buffer"] = buf
                    d_p = buf
                p += -lr * d_p


class AdamW(Optimizer):
    """AdamW (decoupled weight decay), the arithmetic of torch.optim.AdamW's single-tensor path step
    for step, so results equal torch's bit for bit on CPU (tests/test_model.py checks it)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                if wd != 0:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                step_size = lr / (1 - beta1 ** step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)


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


def lrs_at(start: int, n: int, o: OptimConfig, total_steps: int) -> list[float]:
    """lr_at for steps start .. start + n - 1: a piecewise-constant schedule's once where it does not
    change within them (lr_at of the step schedule takes ~2 µs: 20 a call of the fast path's
    steps add 2% to it)."""
    first = lr_at(start, o, total_steps)
    if o.schedule in ("constant", "step") and lr_at(start + n - 1, o, total_steps) == first:
        return [first] * n
    return [lr_at(s, o, total_steps) for s in range(start, start + n)]
