"""CPU threads: how many a run uses, and a watch on its speed that says when other processes slow it.

`train.threads=0` (the default) chooses by the work of one training step. Measured on a 2-core AMD
EPYC with torch 2.13 (plain AdamW steps, docs/speed.md): on an idle machine two threads beat one by
1.1x at the lecture's size (0.4M multiply-adds a step) and by 1.4-1.7x from 5M to 565M; beside one
busy core, a team of two OpenMP threads stalls at every barrier and runs 1.6-4.7x slower than one
thread at every size measured. So one thread, unless a step is large (LARGE): then all the cores
this process may use. The choice depends on the config and the machine only, never on the load
of the moment, because the thread count can change the last bits of a large model's losses and the
same config must give the same numbers. A run that slows down far below its own best speed says
so once, with what to do (SpeedWatch).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports neither torch nor the config, so the workers can use cores()
    from nplm.config import Config

LARGE = 50e6  # multiply-adds per training step (forward) from which a run uses every core
SLOWER = 3.0  # a logged interval this many times slower than the run's best (twice in a row): warn


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def step_macs(cfg: Config, vocab_size: int) -> float:
    """Multiply-adds of one forward pass over a minibatch: the size that decides the thread count."""
    m = cfg.model
    if m.type != "nplm":
        return 0.0
    inputs = m.block_size * m.n_embd
    last = m.n_hidden or inputs
    per_example = (inputs * m.n_hidden + (m.n_layer - 1) * m.n_hidden ** 2 if m.n_hidden else 0) + output_macs(
        last, vocab_size, list(m.softmax_cutoffs), m.softmax_div)
    if m.direct and m.n_hidden:
        per_example += inputs * vocab_size
    return float(cfg.train.batch_size * per_example)


def output_macs(width: int, vocab_size: int, cutoffs: list[int], div: float) -> float:
    """Multiply-adds of the output layer for one example: width x vocab_size, or with an adaptive softmax
    its head and every cluster (as evaluation computes them; training, only the targets' clusters)."""
    if not cutoffs:
        return width * vocab_size
    edges = list(cutoffs) + [vocab_size]
    macs = width * (cutoffs[0] + len(cutoffs))
    for i in range(len(cutoffs)):
        units = max(1, int(width // div ** (i + 1)))
        macs += width * units + units * (edges[i + 1] - edges[i])
    return macs


def choose(cfg: Config, vocab_size: int, runs: int = 1) -> tuple[int, str]:
    """(threads, why) for training `runs` stacked models of this config (1: one run)."""
    if cfg.train.threads:
        return cfg.train.threads, "train.threads"
    if cfg.reproducible:  # a sum split among threads depends on their number: one, on every machine
        return 1, "reproducible=true: one thread, as on every machine"
    work, n = runs * step_macs(cfg, vocab_size), cores()
    size = f"{work / 1e6:.1f}M multiply-adds a step"
    if n == 1 or work < LARGE:
        return 1, f"{size}: one thread is about as fast as {n} and is never stalled by other busy processes"
    return n, f"{size}: large enough to share among the {n} cores (train.threads=1 if other work is running)"


class SpeedWatch:
    """Warns once when training runs far slower than it did earlier in the run (another process on
    its cores): `update(steps_per_s)` at each logged interval returns the warning's text, once."""

    def __init__(self, threads: int):
        self.threads, self.best, self.slow, self.warned = threads, 0.0, 0, False

    def update(self, rate: float) -> str | None:
        if self.warned or not rate:
            return None
        if rate * SLOWER < self.best:
            self.slow += 1
        else:
            self.slow, self.best = 0, max(self.best, rate)
        if self.slow < 2:
            return None
        self.warned = True
        fix = (f"with {self.threads} threads one busy core stalls them all: set train.threads=1"
               if self.threads > 1 else "stop the other work or expect the run to take longer")
        return (f"training slowed from {self.best:,.0f} to {rate:,.0f} steps/s: other processes are using "
                f"this run's CPU cores; {fix}")
