"""Plots of one run: loss curves (log scale) and the learned character embeddings in 2-D."""
from __future__ import annotations

import csv
from pathlib import Path

import torch


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


def plot_losses(metrics_csv: Path, path: Path, title: str = "", level: str = "char") -> Path:
    """train/loss (minibatch) and val/loss (full dev split) against step, log-scale loss; for
    characters with the lecture's 2.17 for scale."""
    curves = read_curve(metrics_csv)
    fig, ax = figure((7, 4.2))
    for key, style in (("train/loss", dict(alpha=0.6, lw=1)), ("val/loss", dict(marker="o", ms=3, lw=1.6))):
        if curves[key]:
            steps, losses = zip(*curves[key])
            ax.plot(steps, losses, label=key, **style)
    if level == "char":
        ax.axhline(2.17, color="grey", ls="--", lw=0.8, label="lecture dev 2.17")
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
    return path


def embedding_2d(C: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(vocab_size, 2) coordinates of the embedding table: itself when n_embd <= 2, else its top-2 PCA."""
    C = C.detach().float().cpu()
    if C.shape[1] == 1:
        return torch.cat([C, torch.zeros_like(C)], dim=1), "dim 0"
    if C.shape[1] == 2:
        return C, "dim 0 / dim 1"
    centred = C - C.mean(dim=0)
    _, S, V = torch.linalg.svd(centred, full_matrices=False)
    explained = (S[:2] ** 2).sum() / (S ** 2).sum()
    return centred @ V[:2].T, f"PCA, {explained:.0%} of variance"


def plot_embedding(C: torch.Tensor, itos: list[str], path: Path, title: str = "", limit: int = 150) -> Path:
    """Every character at its (projected) embedding, as in the lecture's scatter of C; of a word
    vocabulary (most frequent first) the first `limit` words."""
    xy, how = embedding_2d(C)
    words = len(itos) > limit or any(len(t) > 1 for t in itos[1:])
    xy, itos = xy[:limit], itos[:limit]
    fig, ax = figure((9, 9) if words else (6, 6))
    if words:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, color="tab:blue", alpha=0.6)
        for (x, y), w in zip(xy.tolist(), itos):
            ax.annotate(w, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=220, color="tab:blue", alpha=0.85)
        for (x, y), ch in zip(xy.tolist(), itos):
            ax.text(x, y, ch, ha="center", va="center", color="white", fontsize=10, fontweight="bold")
    default = f"the {len(itos)} most frequent words' embeddings" if words else "character embeddings"
    ax.set_title(f"{title or default} ({how})")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.94, bottom=0.06)
    fig.savefig(path)
    return path
