"""The fast training path: STEPS_PER_CALL minibatch SGD steps of an NPLM as one compiled function.

The plain path (nplm/train.py) runs each step through nn.Module, autograd and the optimiser: at
batch 32 about three quarters of a step is Python, dispatcher and autograd overhead, the
arithmetic ~80 µs (REFERENCE.md). Here the forward pass, its hand-written backward pass and the
SGD update of STEPS_PER_CALL steps are one function that torch.compile (Inductor, C++ on the CPU)
turns into a few kernels; the minibatch indices of those steps are drawn at once from the same
generator, which gives the same numbers as drawing them step by step. The parameters are updated
in place, so the model, the optimiser, checkpoints and resume see exactly what the plain path
would leave: the same math, equal to the plain path within float rounding.

Covered (everything else takes the plain path, which says why): one tanh hidden layer, no norm,
no dropout, no direct connections, SGD without momentum or weight decay, no gradient clipping, no
weight averaging, on the CPU. `train.fast=auto` (default) takes it when covered and the run is
long enough to pay for the compilation (~35 s the first time a shape is seen, ~3 s once
Inductor's on-disk cache holds it); `train.fast=on` takes it whenever covered, `off` never.
"""
from __future__ import annotations

import time

import torch

from nplm.config import Config, ConfigError

STEPS_PER_CALL = 20  # steps per compiled call: 10,200 steps/s at 20 (35 s cold compile), 8,900 at 10 (19 s)
MIN_STEPS = 50_000  # train.fast=auto: shorter runs do not win back a cold compilation


def unsupported(cfg: Config, device: torch.device) -> str | None:
    """Why the fast path does not cover this run (an option it lacks), or None if it does."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    checks = [
        (m.type != "nplm", f"model={m.type}"),
        (m.n_hidden == 0 or m.n_layer != 1, f"model.n_hidden={m.n_hidden}, model.n_layer={m.n_layer} "
                                            "(it covers one hidden layer)"),
        (m.norm != "none", f"model.norm={m.norm}"),
        (m.dropout > 0, f"model.dropout={m.dropout}"),
        (m.direct, "model.direct=true"),
        (o.name != "sgd", f"optim.name={o.name}"),
        (o.momentum != 0, f"optim.momentum={o.momentum}"),
        (o.weight_decay != 0, f"optim.weight_decay={o.weight_decay}"),
        (o.grad_clip != 0, f"optim.grad_clip={o.grad_clip}"),
        (t.ema != 0, f"train.ema={t.ema}"),
        (device.type != "cpu", f"device={device}"),
        (cfg.mode != "train", f"mode={cfg.mode}"),
    ]
    reasons = [why for bad, why in checks if bad]
    return ", ".join(reasons) if reasons else None


def choose(cfg: Config, device: torch.device) -> tuple[bool, str]:
    """(take the fast path?, why) for train.fast = auto | on | off."""
    if cfg.train.fast == "off":
        return False, "train.fast=off"
    why_not = unsupported(cfg, device)
    if why_not and cfg.train.fast == "on":
        raise ConfigError(f"train.fast=on but the fast path does not cover {why_not}; use train.fast=auto "
                          "(it then takes the plain path) or change those options")
    if why_not:
        return False, f"the fast path does not cover {why_not}"
    if cfg.train.fast == "auto" and cfg.train.steps < MIN_STEPS:
        return False, (f"{cfg.train.steps:,} steps are too few to pay for compiling (train.fast=auto takes it "
                       f"from {MIN_STEPS:,}; train.fast=on forces it)")
    return True, f"{STEPS_PER_CALL} steps per call, compiled by torch.compile"


def sgd_steps(C, W1, b1, W2, b2, Xtr, Ytr, ix, lrs):
    """len(ix) SGD steps on minibatches Xtr[ix[k]], Ytr[ix[k]] with learning rates lrs[k], updating
    the parameters in place. Returns each step's minibatch loss (before its update)."""
    losses = []
    for k in range(ix.shape[0]):
        idx, y = Xtr[ix[k]], Ytr[ix[k]]  # (B, block_size), (B,)
        B = idx.shape[0]
        x = C[idx].view(B, -1)  # (B, block_size * n_embd)
        h = torch.tanh(x @ W1 + b1)
        logits = h @ W2 + b2
        lse = logits.logsumexp(1)
        losses.append((lse - logits.gather(1, y[:, None]).squeeze(1)).mean())
        # backward: d loss / d logits = (softmax - one-hot) / B, then the chain rule by hand
        dlogits = (logits - lse[:, None]).exp()
        dlogits = dlogits.scatter_add(1, y[:, None], torch.full_like(lse[:, None], -1.0)) / B
        dh = (dlogits @ W2.t()) * (1 - h * h)
        dx = (dh @ W1.t()).view(-1, C.shape[1])
        dC = torch.zeros_like(C).index_add_(0, idx.reshape(-1), dx)
        lr = lrs[k]
        W2.sub_(lr * (h.t() @ dlogits))
        b2.sub_(lr * dlogits.sum(0))
        W1.sub_(lr * (x.t() @ dh))
        b1.sub_(lr * dh.sum(0))
        C.sub_(lr * dC)
    return torch.stack(losses)


class FastSteps:
    """Calls of STEPS_PER_CALL compiled SGD steps on a model's parameters, in place."""
    K = STEPS_PER_CALL

    def __init__(self, model: torch.nn.Module):
        # the parameters' tensors (sharing their storage), made once: new tensor objects on every call
        # would cost Dynamo's guards time
        self.tensors = [p.data for p in (model.C, model.hidden[0].weight, model.hidden[0].bias, model.out.weight,
                                         model.out.bias)]
        # cpp_wrapper: Inductor's call sequence in C++ too, not Python (~15% faster at batch 32)
        self.fn = torch.compile(sgd_steps, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})
        self.compile_time = None  # seconds the first call took beyond its steps' share: set after it

    @torch.no_grad()
    def __call__(self, Xtr: torch.Tensor, Ytr: torch.Tensor, ix: torch.Tensor, lrs: list[float]) -> torch.Tensor:
        t0 = time.perf_counter()
        losses = self.fn(*self.tensors, Xtr, Ytr, ix, torch.tensor(lrs, dtype=torch.float32))
        if self.compile_time is None:
            self.compile_time = time.perf_counter() - t0
        return losses
