"""Plots of one run: loss curves (log scale) and the learned character embeddings in 2-D.

A run's plots are drawn by a worker process (`start_worker`, `draw`) that train.py starts first
thing: it imports matplotlib (~0.5 s) on another core while the run imports torch, and draws
while the run evaluates its final weights, so a short run ends ~0.7 s sooner (0 steps, measured
alternating with in-process drawing: 3.2-3.35 vs 3.9-4.1 s); the jobs of a sweep run in one process
share it. Without a worker (one core, or it failed: one warning), the plots are drawn in this
process. This module does not import torch, so neither does the worker.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from nplm.threads import cores

log = logging.getLogger("nplm")
_worker: subprocess.Popen | None = None
_owed = 0  # answers the worker owes to requests of draw()
LECTURE_LOSS = 2.17  # the lecture's best val loss: the bar drawn on character-level loss plots


def start_worker() -> None:
    """Start the plot worker, where there is a core for it (and it is not started already)."""
    global _worker
    if _worker is None and cores() > 1:
        try:
            _worker = subprocess.Popen([sys.executable, "-m", "nplm.plots"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        except OSError as e:
            log.warning("no plot worker (%s): plots are drawn in this process", e)


def draw(requests: list[tuple[str, dict]]) -> Callable[[], list[Path]]:
    """Start drawing plots: (name of a drawing function here, its keyword arguments, JSON values),
    in the worker if there is one. Returns a function that waits for them and returns the paths
    written (each request's `path`); without a worker, or if it fails, they are drawn by that function."""
    global _worker, _owed
    worker, sent = _worker, False
    if worker is not None:
        try:
            for _ in range(_owed):  # answers to plots nobody waited for (the run stopped before it did)
                worker.stdout.readline()
            _owed = 0
            for fn, kw in requests:
                worker.stdin.write(json.dumps([fn, kw]) + "\n")
            worker.stdin.flush()
            sent, _owed = True, len(requests)
        except OSError as e:
            log.warning("the plot worker failed (%s); drawing in this process", e)
            _worker = None

    def wait() -> list[Path]:
        global _worker, _owed
        if sent:
            try:
                answers = [worker.stdout.readline() for _ in requests]
                _owed = 0
                if not all(answers):
                    raise OSError("it exited")
                errors = [json.loads(a) for a in answers]
                if not any(errors):
                    return [Path(kw["path"]) for _, kw in requests]
                log.warning("the plot worker could not draw (%s); drawing in this process", next(e for e in errors if e))
            except (OSError, ValueError) as e:
                log.warning("the plot worker failed (%s); drawing in this process", e)
                _worker = None
        return [DRAW[fn](**kw) for fn, kw in requests]
    return wait


def _serve() -> None:
    """The worker: draws each request read from stdin, answers each with a JSON line (null or the
    error), until stdin closes (its parent ended). Ctrl-C is its parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    figure((1, 1))[0].savefig(os.devnull, format="png")  # loads fonts and the PNG writer before it is needed
    for line in sys.stdin:
        fn, kw = json.loads(line)
        try:
            DRAW[fn](**kw)
            error = None
        except Exception as e:  # noqa: BLE001 - reported to the parent, which draws it itself
            error = f"{type(e).__name__}: {e}"
        sys.stdout.write(json.dumps(error) + "\n")
        sys.stdout.flush()


def figure(figsize: tuple[float, float]):
    """A new figure and its axes, for files only: matplotlib's object API with its Agg canvas, no
    pyplot (whose import costs ~0.3 s more at every start, and which keeps figures until closed)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=110)
    return fig, fig.subplots()


def read_curve(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """{'train/loss': [(step, loss), ...], 'val/loss': [...]} from a run's metrics.csv."""
    curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key, points in curves.items():
                if row.get(key):
                    points.append((int(row["step"]), float(row[key])))
    return curves


def plot_losses(metrics_csv: str | Path, path: str | Path, title: str = "", level: str = "char") -> Path:
    """train/loss (minibatch) and val/loss (full val split) against step, log-scale loss; for
    characters with the lecture's 2.17 for scale."""
    curves = read_curve(metrics_csv)
    fig, ax = figure((7, 4.2))
    for key, style in (("train/loss", dict(alpha=0.6, lw=1)), ("val/loss", dict(marker="o", ms=3, lw=1.6))):
        if curves[key]:
            steps, losses = zip(*curves[key])
            ax.plot(steps, losses, label=key, **style)
    if level == "char":
        ax.axhline(LECTURE_LOSS, color="grey", ls="--", lw=0.8, label=f"lecture {LECTURE_LOSS}")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter  # plain numbers, not 2.4x10^0, on a log axis
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (nats per {'character' if level == 'char' else 'word'}, log scale)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.subplots_adjust(left=0.11, right=0.98, top=0.93, bottom=0.12)  # fixed: tight_layout draws it twice
    fig.savefig(path)
    return Path(path)


def embedding_2d(C):
    """(vocab_size, 2) coordinates of the embedding table C (a tensor): itself when n_embd <= 2,
    else its top-2 PCA; and how they were made."""
    import torch
    C = C.detach().float().cpu()
    if C.shape[1] == 1:
        return torch.cat([C, torch.zeros_like(C)], dim=1), "dim 0"
    if C.shape[1] == 2:
        return C, "dim 0 / dim 1"
    centred = C - C.mean(dim=0)
    _, S, V = torch.linalg.svd(centred, full_matrices=False)
    explained = (S[:2] ** 2).sum() / (S ** 2).sum()
    return centred @ V[:2].T, f"PCA, {explained:.0%} of variance"


def plot_embedding(xy: list[list[float]], how: str, itos: list[str], path: str | Path, title: str = "",
                   limit: int = 150) -> Path:
    """Every character at its (projected) embedding xy (embedding_2d), as in the lecture's scatter
    of C; of a word vocabulary (most frequent first) the first `limit` words."""
    words = len(itos) > limit or any(len(t) > 1 for t in itos[1:])
    xy, itos = xy[:limit], itos[:limit]
    fig, ax = figure((9, 9) if words else (6, 6))
    if words:
        ax.scatter(*zip(*xy), s=8, color="tab:blue", alpha=0.6)
        for (x, y), w in zip(xy, itos):
            ax.annotate(w, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
    else:
        ax.scatter(*zip(*xy), s=220, color="tab:blue", alpha=0.85)
        for (x, y), ch in zip(xy, itos):
            ax.text(x, y, ch, ha="center", va="center", color="white", fontsize=10, fontweight="bold")
    default = f"the {len(itos)} most frequent words' embeddings" if words else "character embeddings"
    ax.set_title(f"{title or default} ({how})")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.94, bottom=0.06)
    fig.savefig(path)
    return Path(path)


DRAW = {"losses": plot_losses, "embedding": plot_embedding}

if __name__ == "__main__":
    _serve()
