"""The training loop: minibatch steps, metrics rows, evaluations and saves.

`Cadence` is the one place that decides at which steps a run logs, evaluates and saves its state
(and so how far one call of K steps may run). `Monitor` is one run's own record of its training: its
metrics rows, its best val loss (and those weights, for train.keep_best), divergence. `fit` is the
loop of one run; the stacked loop of a vectorised group (nplm/sweep/vector.py) runs on the same two,
so a change to when a run logs or evaluates is made once, here.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from nplm.checkpoint import TrainState
from nplm.config import Config
from nplm.evaluate import DivergenceWatch, perplexity, split_loss
from nplm.model import NPLM
from nplm.optim import EMA, Optimizer, clip_grad_norm, lr_at, lrs_at
from nplm.resume import Interrupted, StopSignals
from nplm.threads import SpeedWatch
from nplm.tracking import Tracker

log = logging.getLogger("nplm")


class Diverged(Exception):
    """A loss became NaN or inf, or rose far above where training started (evaluate.divergence_limit).
    args: (step, loss, training seconds then, what: 'training loss' or 'val loss')."""


@dataclass
class Cadence:
    """When a run of `steps` steps logs a metrics row (every log_interval steps), evaluates the full
    val split and saves its training state (every eval_interval steps, and at the last step).
    Steps are counted as steps done: 1 after the first step."""
    steps: int
    log_interval: int
    eval_interval: int

    def evaluates(self, done: int) -> bool:
        return done % self.eval_interval == 0 or done == self.steps

    def logs(self, done: int) -> bool:
        return done % self.log_interval == 0 or self.evaluates(done)

    def next_stop(self, done: int) -> int:
        """The next step count at which the run logs, evaluates or ends: a call of several steps never runs past it."""
        return min(self.steps, *(done // n * n + n for n in (self.log_interval, self.eval_interval)))


@dataclass
class Fit:
    """What training left, besides the weights: the best val loss and its step, the training seconds,
    the weights of that step (train.keep_best), the training path (nplm/fast.py's record), and the
    step early stopping ended it at (train.patience; None if it ran all its steps)."""
    best_val: float = math.inf
    best_step: int = -1
    train_time: float = 0.0
    best_state: dict | None = None
    path: dict = field(default_factory=dict)
    stopped_at: int | None = None


class Monitor:
    """One run's record of its own training: builds its metrics rows, evaluates the val split (X, Y)
    when told, keeps its best val loss (and the weights then, if keep_best), and raises Diverged when
    a logged loss shows the run has diverged (evaluate.DivergenceWatch)."""

    def __init__(self, limit: float, keep_best: bool, X: torch.Tensor, Y: torch.Tensor, chunk: int,
                 resume: TrainState | None = None):
        self.watch, self.keep_best, self.X, self.Y, self.chunk = DivergenceWatch(limit), keep_best, X, Y, chunk
        self.best_val, self.best_step, self.best_state, self.val_loss = math.inf, -1, None, math.nan
        if resume is not None:
            self.best_val, self.best_step = resume.best_val_loss, resume.best_step
            self.best_state, self.val_loss = resume.best_state, resume.val_loss

    def row(self, done: int, loss: float, lr: float, elapsed: float, rate: float,
            evaluated: torch.nn.Module | None = None) -> dict:
        """The metrics row of step `done`, with the val split's loss of `evaluated` if given."""
        row = {"step": done, "train/loss": loss, "lr": lr, "elapsed": elapsed, "steps_per_s": rate}
        if self.watch.train(loss):
            raise Diverged(done, loss, elapsed, "training loss")
        if evaluated is not None:
            val = self.val_loss = split_loss(evaluated, self.X, self.Y, self.chunk)
            row["val/loss"], row["val/ppl"] = val, perplexity(val)
            if self.watch.val(val):
                raise Diverged(done, val, elapsed, "val loss")
            if val < self.best_val:
                self.best_val, self.best_step = val, done
                if self.keep_best:
                    self.best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
        return row

    def fit(self, train_time: float, path: dict, stopped_at: int | None = None) -> Fit:
        return Fit(self.best_val, self.best_step, train_time, self.best_state, path, stopped_at)

    def stale(self, done: int, patience: int, eval_interval: int) -> bool:
        """Early stopping: whether `patience` evaluations (eval_interval steps each) have passed since
        the best one. From the steps alone, so a resumed run stops where it would have."""
        return patience > 0 and self.best_step >= 0 and done - self.best_step >= patience * eval_interval


@dataclass
class Setup:
    """What one run trains with (built by nplm/train.py): its config, model and optimiser, its
    training generator (parameter draws, then minibatches), its splits on its device, the loss above
    which it has diverged, its weights' moving average (train.ema), and its training path
    (nplm/fast.py's steps_for: a function of K steps per call, or None for one step at a time
    through autograd, and what the summary records of it)."""
    cfg: Config
    model: NPLM
    optimizer: Optimizer
    g: torch.Generator
    X: dict[str, torch.Tensor]
    Y: dict[str, torch.Tensor]
    limit: float
    steps: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    path: dict = field(default_factory=dict)
    ema: EMA | None = None  # train.ema: the weights' moving average, evaluated and ended with


def fit(s: Setup, tracker: Tracker, stop: StopSignals, resume: TrainState | None, t_start: float) -> Fit:
    """Train one run: minibatch steps, a metrics row and an evaluation as Cadence says (of the weights'
    moving average if train.ema), the training state saved after each evaluation, and on SIGINT or
    SIGTERM a save and Interrupted. Starts where `resume` left off. Steps run K at a time through
    s.steps (the fast path) where the next log or evaluation is at least K steps away, else one at a
    time through autograd. Raises Diverged when a loss is not finite or above the limit. The progress line's
    steps/s counts training time only (not evaluations or saves)."""
    cfg, model, g = s.cfg, s.model, s.g
    o, t, device = cfg.optim, cfg.train, s.X["train"].device
    cadence = Cadence(t.steps, t.log_interval, t.eval_interval)
    ema = s.ema  # Polyak averaging: evaluate (and end with) the averaged weights
    evaluated = ema.module if ema is not None else model
    monitor = Monitor(s.limit, t.ends_with_best, s.X["val"], s.Y["val"], t.eval_chunk, resume)
    done, train_time = (resume.step, resume.train_time) if resume else (0, 0.0)
    if resume and ema is not None:
        ema.load_state_dict(resume.ema)

    def save(done: int) -> None:  # everything the rest of the run depends on, as of `done` steps
        TrainState(
            step=done, config=dataclasses.asdict(cfg), model=model.state_dict(), optimizer=s.optimizer.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            rng={"train": g.get_state(), "torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
            best_val_loss=monitor.best_val, best_step=monitor.best_step, best_state=monitor.best_state,
            val_loss=monitor.val_loss, train_time=train_time, wall_time=time.perf_counter() - t_start,
            wandb_id=tracker.wandb_id, resumed_at=(resume.resumed_at + [resume.step]) if resume else [],
        ).save(tracker.out_dir)

    steps = s.steps
    watch, logged_time, since_log, start = SpeedWatch(torch.get_num_threads()), train_time, 0, done
    t_loop = time.perf_counter()  # building the compiled package is not training
    while done < t.steps:
        t0 = time.perf_counter()
        if steps is not None and cadence.next_stop(done) - done >= steps.K:  # K steps in one call
            n, lr, loss, finite = _k_steps(s, steps, done)
        else:
            n, lr = 1, lr_at(done, o, t.steps)
            loss = _step(s, lr)
            finite = device.type != "cpu" or math.isfinite(loss.item())  # cheap on CPU: stop at once
        done += n
        train_time += time.perf_counter() - t0
        since_log += n
        if not finite:
            raise Diverged(done, loss.item(), train_time, "training loss")
        if cadence.logs(done):
            rate = since_log / max(train_time - logged_time, 1e-9)
            logged_time, since_log = train_time, 0
            row = monitor.row(done, loss.item(), lr, train_time, rate,
                              evaluated if cadence.evaluates(done) else None)
            tracker.log(row)
            # time left: at the wall-clock pace of this process so far, evaluations and saves included
            progress(cfg, row, (time.perf_counter() - t_loop) / (done - start))
            if (warning := watch.update(rate)) is not None:
                log.warning(warning)
            if cadence.evaluates(done):
                save(done)
                if done < t.steps and monitor.stale(done, t.patience, t.eval_interval):
                    log.info("early stopping at step %d: no better val loss for %d evaluations (best %.4f at step "
                             "%d)", done, t.patience, monitor.best_val, monitor.best_step)
                    break
        if stop.signum is not None:  # SIGINT/SIGTERM came during this step: save (unless just saved), stop
            if not cadence.evaluates(done):
                save(done)
            raise Interrupted(stop.signum, done)
    if ema is not None:  # end with the averaged weights, the ones every evaluation measured
        model.load_state_dict(ema.module.state_dict())
    return monitor.fit(train_time, s.path, done if done < t.steps else None)


def _k_steps(s: Setup, steps, done: int) -> tuple[int, float, torch.Tensor, bool]:
    """steps.K steps in one call of the fast path, from step `done`: their minibatch indices drawn at
    once (the same numbers as one by one). Returns (steps that count, the last one's lr and loss,
    whether all were finite): on a loss that is not finite, the run stops at that step."""
    t = s.cfg.train
    Xtr, Ytr = s.X["train"], s.Y["train"]
    lrs = lrs_at(done, steps.K, s.cfg.optim, t.steps)
    ix = torch.randint(0, len(Xtr), (steps.K * t.batch_size,), generator=s.g).to(Xtr.device)
    xb, yb = batch(Xtr, Ytr, ix)
    losses = steps(xb.view(steps.K, t.batch_size, -1), yb.view(steps.K, t.batch_size),
                   torch.tensor(lrs, dtype=torch.float64))
    # the sum is finite when every loss is (4x cheaper a call to check); if not, look closer
    finite, n = math.isfinite(losses.sum().item()) or bool(torch.isfinite(losses).all()), steps.K
    if not finite:
        n = int(torch.nonzero(~torch.isfinite(losses))[0]) + 1
    return n, lrs[n - 1], losses[n - 1], finite


def _step(s: Setup, lr: float) -> torch.Tensor:
    """One step of the plain path on a minibatch drawn from the training generator. Returns its loss."""
    Xtr, Ytr = s.X["train"], s.Y["train"]
    ix = torch.randint(0, len(Xtr), (s.cfg.train.batch_size,), generator=s.g).to(Xtr.device)
    return plain_step(s, *batch(Xtr, Ytr, ix), lr)


def batch(X: torch.Tensor, Y: torch.Tensor, ix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The minibatch of rows ix (1-D) of a split: X[ix], Y[ix], gathered with index_select (2.3x
    faster than indexing on a split larger than the caches: 29 against 67 us for 256 names)."""
    return X.index_select(0, ix), Y.index_select(0, ix)


def plain_step(s: Setup, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
    """One step of the plain path on the minibatch (x, y): autograd and the optimiser (the reference
    the compiled step, nplm/step.py, is checked against). Returns its loss."""
    s.optimizer.set_lr(lr)
    _, loss = s.model(x, y)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.cfg.optim.grad_clip:
        clip_grad_norm(s.model.parameters(), s.cfg.optim.grad_clip)
    s.optimizer.step()
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    return loss


def progress(cfg: Config, row: dict, seconds_per_step: float) -> None:
    """The progress line of a metrics row: training steps/s, and the time left at `seconds_per_step`."""
    t, val = cfg.train, row.get("val/loss")
    log.info("step %*d/%d | train/loss %.4f |%s lr %.2e | %.0f steps/s | %s left",
             len(str(t.steps)), row["step"], t.steps, row["train/loss"],
             (f" val/loss {val:.4f}" + (f" (ppl {perplexity(val):.1f})" if cfg.data.level == "word" else "") + " |")
             if val is not None else "", row["lr"], row["steps_per_s"],
             hms((t.steps - row["step"]) * seconds_per_step))


def hms(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
