"""The compiled training step of any network recipe: forward, backward, clipping, the optimiser and
the weights' moving average of K minibatch steps as one function of tensors, for nplm/fast.py to
compile (AOTInductor) and call.

The plain path (nplm/loop.py's _step) is the reference; this is the same arithmetic, written so that
every shape is fixed by the batch's (torch.export needs that) and every update is made in place on
the tensors the run already holds (the model's parameters and buffers, the optimiser's state, the
moving average's copy), so that evaluations, checkpoints and resume see what the plain path would
leave, to float rounding. What differs, and why:

- Dropout and word dropout read uniform draws computed inside the call, a hash of a seed drawn from
  torch's global generator (the generator the plain path's masks come from, seeded by the run's
  seed and saved with its state) once per call: masks of the same distribution, not the same masks
  (drawing them with torch.rand took 1.1 ms of experiment=best's 12 ms step).
- An adaptive softmax computes each cluster for a fixed number of rows (`capacities`, from the
  training split's targets), those whose targets fall in it, as the plain path does; a step with
  more such rows than that (about once in 1e12 steps) runs eagerly with every row, the same function
  (`Step.fits`). A cluster no target used in a step gets a zero gradient there, where the plain path
  skips its update.
- The hashed n-gram table (model.maxent_order) is updated outside autograd, only in the rows the
  minibatch used, as the plain path's sparse gradients do: its rows' gradients are summed per row
  (sorted and segmented), with fixed shapes.
- Learning rates and bias corrections are computed per step in float64 outside the call (Python
  floats, as the plain optimiser does) and passed in as float32.

`Step` maps a run's tensors to the function's flat arguments; `make_fn` builds the function from a
config (in the process that compiles it, nplm/fast.py's child).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch

from nplm.config import Config
from nplm.model import NPLM
from nplm.optim import EMA, Optimizer


@dataclasses.dataclass(frozen=True)
class Layout:
    """How many tensors of each kind the function takes, in this order: dense parameters, buffers,
    optimiser state (AdamW: two moments per parameter; SGD with momentum: one buffer), the moving
    average's parameters and buffers, the n-gram table and its two moments (AdamW), then the K steps'
    minibatches X (K, batch, block_size), Y (K, batch), per-step scalars (K, n) and dropout's seed (1,).
    groups[i]: the optimiser group of dense parameter i."""
    groups: tuple[int, ...]
    weight_decay: tuple[float, ...]  # of each dense group (the table's group, if any, comes after them)
    buffers: int
    moments: int  # optimiser state tensors per dense parameter: 2 (adamw), 1 (sgd, momentum), 0
    ema: bool
    table: bool  # the hashed n-gram table (model.maxent_order)
    table_moments: int
    layers: int  # hidden layers with dropout (0: no dropout)
    word: bool  # word dropout

    @property
    def state(self) -> int:
        """Tensors before the minibatches."""
        n, b = len(self.groups), self.buffers
        return n + b + self.moments * n + (n + b if self.ema else 0) + (1 + self.table_moments if self.table else 0)


def dense_parameters(model: NPLM) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's named parameters the step differentiates (all but the hashed n-gram table, which
    it updates outside autograd), in the function's order."""
    sparse = {id(p) for p in model.sparse_params()}
    return [(name, p) for name, p in model.named_parameters() if id(p) not in sparse]


def layout(cfg: Config, model: NPLM, optimizer: Optimizer) -> Layout:
    """The Layout of a run's step: its model's tensors, its optimiser's groups and state."""
    sparse = {id(p) for p in model.sparse_params()}
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    dense = [p for _, p in dense_parameters(model)]
    m, o = cfg.model, cfg.optim
    dense_groups = [g for g in optimizer.param_groups if not any(id(p) in sparse for p in g["params"])]
    return Layout(groups=tuple(group_of[id(p)] for p in dense),
                  weight_decay=tuple(g["weight_decay"] for g in dense_groups), buffers=len(list(model.buffers())),
                  moments=2 if o.name == "adamw" else 1 if o.momentum else 0, ema=bool(cfg.train.ema),
                  table=bool(sparse), table_moments=2 if sparse and o.name == "adamw" else 0,
                  layers=len(model.hidden) if m.dropout > 0 else 0, word=m.word_dropout > 0)


def capacities(model: NPLM, targets: torch.Tensor, batch_size: int) -> tuple[int, ...] | None:
    """With an adaptive softmax, how many rows of a minibatch the compiled step computes each cluster
    for: the mean count of a minibatch drawn uniformly from `targets` (the training split's) plus the
    margin t of Chernoff's bound P(count >= mean + t) <= exp(-t^2 / (2 (mean + t / 3))) = 1e-12,
    rounded up to a multiple of 8 (at most the batch). experiment=words_large on data=shakespeare:
    64 of 256 rows for the 2,000 words of the middle cluster, 56 for the other 8,022."""
    if model.adaptive is None:
        return None
    edges, L = model.adaptive.cutoffs, 12 * math.log(10)
    caps = []
    for lo, hi in zip(edges, edges[1:]):
        mean = batch_size * ((targets >= lo) & (targets < hi)).double().mean().item()
        t = L / 3 + math.sqrt(L * L / 9 + 2 * L * mean)
        caps.append(min(batch_size, 8 * math.ceil((mean + t) / 8)))
    return tuple(caps)


def scalars(cfg: Config, optimizer: Optimizer, lrs: list[float], t0: int, ema_count: int) -> torch.Tensor:
    """The per-step scalars (K, n) of steps t0 + 1 .. t0 + K at learning rates lrs, in float64 as the
    plain optimiser computes them, then float32: per optimiser group, AdamW's 1 - lr x weight decay
    and lr / (1 - beta1^t), or SGD's -lr; AdamW's sqrt(1 - beta2^t); the moving average's weight."""
    o, rows = cfg.optim, []
    for k, lr in enumerate(lrs):
        t, row = t0 + k + 1, []
        for g in optimizer.param_groups:
            lr_g = lr * g.get("lr_scale", 1.0)
            row += [1 - lr_g * g["weight_decay"], lr_g / (1 - o.betas[0] ** t)] if o.name == "adamw" else [-lr_g]
        if o.name == "adamw":
            row.append((1 - o.betas[1] ** t) ** 0.5)
        row.append(1.0 if ema_count + k == 0 else 1 - cfg.train.ema)  # the first average copies the weights
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)  # each Python float (float64) rounded once, as .to() would


class Step:
    """A run's tensors in the function's order (Layout), and what a call needs besides them: the
    per-step scalars and dropout's seed. The tensors are the run's own (the model's parameters and
    buffers, the optimiser's state, the moving average's copy): the compiled function updates them in
    place, and so does the plain path's step, so both may train the same run in turn."""

    def __init__(self, cfg: Config, model: NPLM, optimizer: Optimizer, ema: EMA | None,
                 caps: tuple[int, ...] | None = None):
        self.cfg, self.model, self.optimizer, self.ema, self.caps = cfg, model, optimizer, ema, caps
        self.layout = layout(cfg, model, optimizer)
        dense = [p for _, p in dense_parameters(model)]
        dense_ids = {id(p) for p in dense}
        for p in model.parameters():  # the optimiser's state as its first step would make it
            state = optimizer.state.setdefault(p, {})
            if cfg.optim.name == "adamw" and not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            elif cfg.optim.momentum and id(p) in dense_ids and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
        moments = {2: ("exp_avg", "exp_avg_sq"), 1: ("momentum_buffer",), 0: ()}[self.layout.moments]
        self.tensors = [p.data for p in dense] + [b.data for b in model.buffers()]
        self.tensors += [optimizer.state[p][name] for p in dense for name in moments]
        if ema is not None:
            shared = {id(p) for p in ema.shared.values()}
            self.tensors += [t.data for t in itertools.chain(ema.module.parameters(), ema.module.buffers())
                             if id(t) not in shared]
        if self.layout.table:
            table = model.maxent.weight
            self.tensors.append(table.data)
            self.tensors += [optimizer.state[table][k] for k in ("exp_avg", "exp_avg_sq")[:self.layout.table_moments]]
        assert len(self.tensors) == self.layout.state
        self.counts = [optimizer.state[p]["step"] for p in model.parameters()] if cfg.optim.name == "adamw" else []

    def step_count(self) -> int:
        """Steps the optimiser has taken (AdamW's count; SGD keeps none, nor needs one)."""
        return int(self.counts[0].item()) if self.counts else 0

    def args(self, X: torch.Tensor, Y: torch.Tensor, lrs: list[float]) -> list[torch.Tensor]:
        """The function's arguments for K = len(X) steps at learning rates lrs: dropout's seed is
        drawn from torch's global generator (the plain path's masks' generator)."""
        n_ema = int(self.ema.n_averaged) if self.ema is not None else 0
        seed = torch.randint(0, 2 ** 31, (1,), dtype=torch.int32) if self.layout.layers or self.layout.word \
            else torch.zeros(1, dtype=torch.int32)
        return [*self.tensors, X, Y, scalars(self.cfg, self.optimizer, lrs, self.step_count(), n_ema), seed]

    def fits(self, Y: torch.Tensor) -> bool:
        """Whether no minibatch of Y (K, batch) has more targets in an adaptive softmax's cluster than
        the function computes it for (caps)."""
        if self.caps is None:
            return True
        edges = self.model.adaptive.cutoffs
        return all(int(((Y >= lo) & (Y < hi)).sum(1).max()) <= cap for lo, hi, cap in zip(edges, edges[1:], self.caps))

    def after(self, K: int) -> None:
        """The counters the function does not keep: the optimiser's steps, the moving average's count."""
        if self.counts:
            torch._foreach_add_(self.counts, K)
        if self.ema is not None:
            self.ema.n_averaged += K


def make_fn(cfg: Config, model: NPLM, lay: Layout, caps: tuple[int, ...] | None = None):
    """The function of K steps for `cfg`'s recipe on `model` (a stand-in of the run's shape: its
    weights are not used, the function's arguments are), an adaptive softmax's clusters computed for
    `caps` rows (capacities; None: every row). Returns the K steps' losses; every other result is
    written in place into its arguments."""
    o, t = cfg.optim, cfg.train
    names = [name for name, _ in dense_parameters(model)]
    buffer_names = [n for n, _ in model.named_buffers()]
    n, nb = len(names), len(buffer_names)
    adamw, wd = o.name == "adamw", lay.weight_decay

    def fn(*args):
        it = iter(args)
        params = [next(it) for _ in range(n)]
        buffers = [next(it) for _ in range(nb)]
        moments = [[next(it) for _ in range(lay.moments)] for _ in range(n)]
        ema = [next(it) for _ in range(n + nb)] if lay.ema else []
        table = next(it) if lay.table else None
        table_moments = [next(it) for _ in range(lay.table_moments)]
        X, Y, sc, seed = next(it), next(it), next(it), next(it)
        losses = []
        for k in range(X.shape[0]):
            idx, y = X[k], Y[k]
            B, T = idx.shape
            first = k * (lay.layers + 1)  # one stream per layer and one for word dropout, in each step
            noise = {"hidden": [uniform(seed, first + i, (B, model.hidden[i].weight.shape[1]))
                                for i in range(lay.layers)],
                     "word": uniform(seed, first + lay.layers, (B, T, 1)) if lay.word else None}
            leaves = [p.detach().requires_grad_() for p in params]
            extra, rows = None, None
            if table is not None:
                rows = model.maxent.index(idx)  # (B, order)
                extra = table[rows].sum(1).detach().requires_grad_()
            with torch.enable_grad():
                loss = _loss(model, names, leaves, buffer_names, buffers, idx, y, noise, extra, caps)
                grads = list(torch.autograd.grad(loss, leaves + ([extra] if extra is not None else [])))
            losses.append(loss.detach())
            with torch.no_grad():
                sparse = _coalesce(rows, grads.pop()) if table is not None else None
                if o.grad_clip:
                    _clip(grads, sparse, o.grad_clip)
                _update(params, grads, moments, lay.groups, sc[k], adamw, o, wd)
                if table is not None:
                    _update_rows(table, table_moments, sparse, sc[k], adamw, len(wd), o)
                if lay.ema:
                    w = sc[k, -1]
                    for a, b in zip(ema, params + buffers):
                        if a.is_floating_point():
                            a.lerp_(b, w)
                        else:  # BatchNorm's num_batches_tracked, as EMA.update_parameters
                            a.copy_(torch.where(w == 1.0, b, (a * t.ema + b * (1 - t.ema)).to(a.dtype)))
        return (torch.stack(losses),)

    return fn


def uniform(seed: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform draws in [0, 1) of `shape`, a hash of (seed, stream, position): the compiled step's
    dropout masks, computed inside it. 24 random bits each from a 32-bit integer hash (lowbias32's
    mixing) in int32 arithmetic, which wraps and which Inductor vectorises (in int64 it did not: a
    third of experiment=best's step); the shifts are masked, so that they are logical. The seed
    (int32) is one draw of torch's global generator per call (Step.args): the run's seed decides it,
    and a resumed run goes on with the same draws; `stream` tells the step's layers apart."""
    x = torch.arange(math.prod(shape), dtype=torch.int32, device=seed.device) * 0x61C88647 \
        + (seed * 0x2545F491 + stream * 0x632BE5AB)
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x5BD1E995
    x = x ^ ((x >> 16) & 0xFFFF)
    return (((x >> 8) & 0xFFFFFF).to(torch.float32) * 2.0 ** -24).view(shape)


def _loss(model, names, leaves, buffer_names, buffers, idx, y, noise, extra, caps):
    """model.step_loss with the function's tensors in place of the model's own (BatchNorm's running
    statistics are updated in the buffers given)."""
    with torch.nn.utils.stateless._reparametrize_module(model, {**dict(zip(names, leaves)),
                                                                **dict(zip(buffer_names, buffers))}):
        return model.step_loss(idx, y, noise, extra, caps)


def _coalesce(rows: torch.Tensor, grad: torch.Tensor):
    """The n-gram table's gradient as the plain path's coalesced sparse one, in fixed shapes: rows
    (B, order) each got the gradient of its example's logits, grad (B, vocab_size). Returns the
    distinct rows (N = B x order slots: the first ones distinct, sorted; the rest repeat the first),
    their summed gradients (N, vocab_size; zero in the repeated slots) and which slots are distinct."""
    B, order = rows.shape
    flat = rows.reshape(-1)
    g = grad[:, None, :].expand(B, order, grad.shape[1]).reshape(B * order, -1)
    sorted_rows, perm = flat.sort(stable=True)
    first = torch.cat([sorted_rows.new_ones(1, dtype=torch.bool), sorted_rows[1:] != sorted_rows[:-1]])
    segment = first.long().cumsum(0) - 1
    summed = torch.zeros_like(g).index_add_(0, segment, g[perm])
    distinct = torch.zeros_like(sorted_rows).scatter_(0, segment, sorted_rows)
    valid = torch.arange(len(flat), device=flat.device) <= segment[-1]
    return torch.where(valid, distinct, distinct[0]), summed, valid


def _clip(grads: list[torch.Tensor], sparse, max_norm: float) -> None:
    """optim.clip_grad_norm: every gradient scaled so that their joint norm is at most max_norm."""
    norms = [torch.linalg.vector_norm(g) for g in grads] + ([torch.linalg.vector_norm(sparse[1])] if sparse else [])
    coef = torch.clamp(max_norm / (torch.linalg.vector_norm(torch.stack(norms)) + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    if sparse:
        sparse[1].mul_(coef)


def _update(params, grads, moments, groups, sc, adamw: bool, o, wd) -> None:
    """The optimiser's step on the dense parameters, as nplm/optim.py's AdamW and SGD."""
    beta1, beta2 = o.betas
    for p, g, m, group in zip(params, grads, moments, groups):
        if adamw:
            decay, step_size, bc2 = sc[2 * group], sc[2 * group + 1], sc[-2]
            if wd[group]:
                p.mul_(decay)
            m[0].lerp_(g, 1 - beta1)
            m[1].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.sub_(step_size * (m[0] / (m[1].sqrt() / bc2 + 1e-8)))
        else:
            d_p = g if wd[group] == 0 else g + wd[group] * p
            if m:
                m[0].mul_(o.momentum).add_(d_p)
                d_p = m[0]
            p.add_(sc[group] * d_p)


def _update_rows(table, table_moments, sparse, sc, adamw: bool, group: int, o) -> None:
    """The n-gram table's step in the rows the minibatch used (lazy Adam as optim.AdamW._sparse_step,
    or SGD). Repeated slots write the first slot's values to the first row again: the same values."""
    rows, g, valid = sparse
    first = lambda x: torch.where(valid[:, None], x, x[:1])  # noqa: E731
    if adamw:
        beta1, beta2 = o.betas
        m = table_moments[0][rows].lerp(g, 1 - beta1)
        v = table_moments[1][rows] * beta2 + (1 - beta2) * g * g
        new = table[rows] - sc[2 * group + 1] * (m / (v.sqrt() / sc[-2] + 1e-8))
        table_moments[0].index_put_((rows,), first(m))
        table_moments[1].index_put_((rows,), first(v))
    else:
        new = table[rows] + sc[group] * g
    table.index_put_((rows,), first(new))
