"""Optimisation: the optimisers (sgd | adamw, sparse gradients included), the learning-rate schedules
(constant | step | cosine | onecycle), gradient clipping and the weights' moving average (train.ema)."""
from __future__ import annotations

import copy
import itertools
import math
from decimal import Decimal

import torch

from nplm.config import OptimConfig


def make_optimizer(model: torch.nn.Module, o: OptimConfig) -> Optimizer:
    """Weight decay applies to the weight matrices only, not to the embedding table, the biases or the
    norms' gains; optim.decay_features adds the embedding table (Bengio et al.'s "weights and
    features"), optim.decay_all every parameter. Sparse parameters (the hashed n-gram table of
    model.maxent_order) are a third group: never decayed, their lr x optim.maxent_lr_scale."""
    sparse_params = getattr(model, "sparse_params", list)()
    sparse = {id(p) for p in sparse_params}
    decays = lambda name, p: o.decay_all or (p.dim() >= 2 and (name != "C" or o.decay_features))  # noqa: E731
    dense = [(name, p) for name, p in model.named_parameters() if id(p) not in sparse]
    decay = [p for name, p in dense if decays(name, p)]
    no_decay = [p for name, p in dense if not decays(name, p)]  # C, b's, norms
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if sparse_params:
        groups.append({"params": sparse_params, "weight_decay": 0.0, "lr_scale": o.maxent_lr_scale})
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

    def set_lr(self, lr: float) -> None:
        """The schedule's lr for the next step (times a group's lr_scale where it has one)."""
        for group in self.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

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
                if grad.is_sparse:
                    self._sparse_step(p, grad, exp_avg, exp_avg_sq, state["step"].item(), lr, beta1, beta2, eps)
                    continue
                if wd != 0:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                step_size = lr / (1 - beta1 ** step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)

    @staticmethod
    def _sparse_step(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps) -> None:
        """Lazy Adam (as torch.optim.SparseAdam): the same update, but only for the rows the gradient
        touches; the moments of the other rows wait, unchanged, until they are used again."""
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        m = exp_avg[rows].lerp_(g, 1 - beta1)
        v = exp_avg_sq[rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        exp_avg[rows], exp_avg_sq[rows] = m, v
        denom = (v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
        p[rows] -= lr / (1 - beta1 ** step) * m / denom


class EMA:
    """An exponential moving average of a model's weights and buffers (Polyak averaging, train.ema):
    torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn and use_buffers=True, the same
    arithmetic and state_dict, except that sparse parameters (the hashed n-gram table of
    model.maxent_order: millions of weights, a few hundred used per step) are not averaged but
    shared with the model: averaging them would cost a pass over all of them at every step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.shared = {id(p): p for p in getattr(model, "sparse_params", list)()}
        self.module = copy.deepcopy(model, memo=dict(self.shared))  # the memo makes the copy reuse them
        self.decay, self.n_averaged = decay, torch.tensor(0, dtype=torch.long)

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        pairs = [(a.detach(), b.detach()) for a, b in zip(
            itertools.chain(self.module.parameters(), self.module.buffers()),
            itertools.chain(model.parameters(), model.buffers())) if id(b) not in self.shared]
        if self.n_averaged == 0:
            for a, b in pairs:
                a.copy_(b)
        else:
            floats = [(a, b) for a, b in pairs if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - self.decay)
            for a, b in pairs:
                if not a.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
                    a.copy_(a * self.decay + b * (1 - self.decay))
        self.n_averaged += 1

    def state_dict(self) -> dict:
        return {"n_averaged": self.n_averaged, **{f"module.{k}": v for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict({k[len("module."):]: v for k, v in state_dict.items() if k.startswith("module.")})
        self.n_averaged.copy_(state_dict["n_averaged"])


def clip_grad_norm(params, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_, which refuses sparse gradients (model.maxent_order), extended
    to them: a sparse gradient's norm is the norm of its coalesced values."""
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad._values() if p.grad.is_sparse
                                                                          else p.grad) for p in params]))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        (p.grad._values() if p.grad.is_sparse else p.grad).mul_(coef)


def lr_at(step: int, o: OptimConfig, total_steps: int) -> float:
    """The learning rate for training step `step` (0-based) of `total_steps`."""
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "inverse":  # Bengio et al. 2003: e0 / (1 + r t), t the updates done
        return o.lr / (1 + o.decay_rate * step)
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
