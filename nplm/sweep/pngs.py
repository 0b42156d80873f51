"""A sweep's static plots (PNG), for people who read reports in a terminal or a pull request: val loss
against each swept key, a heatmap over two, the best runs' curves, the best run's embedding. The
interactive views are in nplm/sweep/dashboard.py; both choose axes with `axis_kind`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nplm.plots import LECTURE_LOSS, figure, read_curve
from nplm.sweep.jobs import word_level


def axis_kind(values: pd.Series, col: str) -> str:
    """How to draw a swept key: 'category' (seeds, strings, booleans, lists), 'log' (positive values
    spread over a decade or more, or spaced more evenly in log than in linear terms, as a learning
    rate's 0.003, 0.01, 0.03 are), else 'linear'."""
    values = values.dropna()
    if col == "seed" or col.endswith("_seed") or values.empty or pd.api.types.is_bool_dtype(values) \
            or not pd.api.types.is_numeric_dtype(values):
        return "category"
    u = np.unique(values.to_numpy(dtype=float))
    if u[0] <= 0 or len(u) < 2:
        return "linear"
    if u[-1] / u[0] > 9.99:  # a decade or more (0.03 / 0.003 is 9.999...)
        return "log"
    if len(u) >= 3:
        spread = lambda d: d.std() / d.mean()  # noqa: E731 - how uneven the steps are
        return "log" if spread(np.diff(np.log(u))) < spread(np.diff(u)) else "linear"
    return "linear"


def category_order(values: pd.Series) -> list[str]:
    """The values of a categorical key as labels, in their natural order (numbers by value)."""
    unique = values.dropna().unique().tolist()
    try:
        unique = sorted(unique)
    except TypeError:
        unique = sorted(unique, key=str)
    return [str(v) for v in unique]


def make_plots(df: pd.DataFrame, swept: list[str], out_dir: Path,
               baseline: tuple[str, float] | None = None) -> dict[str, Path]:
    """The sweep's PNGs. Returns them by title."""
    done = df[df["status"] == "finished"]
    words = word_level(df)
    plots: dict[str, Path] = {}
    if done.empty:
        return plots
    for col in swept:
        plots[f"val loss vs {col}"] = _plot_against(done, col, words, baseline, out_dir)
    if len(swept) == 2:
        plots["val loss heatmap"] = _plot_heatmap(done, *swept, out_dir)
    best = done.nsmallest(5, "val_loss")
    plots["best runs' curves"] = _plot_best_curves(best, swept, words, baseline, out_dir)
    embedding = Path(best.iloc[0]["path"]) / "embedding.png"
    if embedding.is_file():
        plots["best run's embedding"] = embedding
    return plots


def _plot_against(done: pd.DataFrame, col: str, words: bool, baseline: tuple[str, float] | None,
                  out_dir: Path) -> Path:
    """Val loss against one swept hyperparameter: each job, and the mean at each value (a line over
    numbers; a bar at each category, never joined: seeds are not a scale). The legend sits outside."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    fig, ax = figure((6.8, 3.6))
    kind = axis_kind(done[col], col)
    if kind == "category":
        order = category_order(done[col])
        pos = done[col].map(lambda v: order.index(str(v)))
        ax.scatter(pos, done["val_loss"], alpha=0.7, label="job")
        means = done.groupby(pos)["val_loss"].mean()
        ax.scatter(means.index, means.values, marker="_", s=600, color="tab:orange", lw=2, label="mean")
        ax.set_xticks(range(len(order)), order, rotation=30 if max(map(len, order)) > 6 else 0)
    else:
        ax.scatter(done[col], done["val_loss"], alpha=0.7, label="job")
        means = done.groupby(col)["val_loss"].mean()
        ax.plot(means.index, means.values, color="tab:orange", marker="o", label="mean")
        if kind == "log":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            unique = sorted(done[col].unique())
            if len(unique) <= 8:  # a tick at each swept value
                ax.set_xticks(unique, [f"{v:g}" for v in unique])
            else:
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.01, 0.02, 0.05: room for each
                formatter = ScalarFormatter()
                formatter.set_scientific(False)
                ax.xaxis.set_major_formatter(formatter)
    if not words:
        ax.axhline(LECTURE_LOSS, color="grey", ls="--", lw=0.8, label=f"lecture {LECTURE_LOSS}")
    if baseline:
        ax.axhline(baseline[1], color="tab:red", ls=":", lw=1, label=f"{baseline[0]} {baseline[1]:.4f}")
    ax.set_xlabel(col)
    ax.set_ylabel("val loss")
    ax.set_title(f"val loss vs {col}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, out_dir / f"val_vs_{col.replace('.', '_')}.png")


def _plot_heatmap(done: pd.DataFrame, a: str, b: str, out_dir: Path) -> Path:
    """The mean val loss over the values of two swept keys, each cell labelled."""
    table = done.pivot_table(index=a, columns=b, values="val_loss", aggfunc="mean")
    fig, ax = figure((1.2 * len(table.columns) + 3, 0.6 * len(table.index) + 2.2))
    im = ax.imshow(table.values, cmap="viridis", aspect="auto")  # dark: low loss, as on the dashboard
    ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
    ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    lo, hi = im.get_clim()
    for (i, j), v in pd.DataFrame(table.values).stack().items():
        light = (v - lo) > 0.5 * (hi - lo)  # viridis is light (yellow) at high loss
        ax.text(j, i, f"{v:.4f}", ha="center", va="center", color="black" if light else "white", fontsize=9)
    fig.colorbar(im, ax=ax, label="val loss")
    ax.set_title("mean val loss")
    return _save(fig, out_dir / "heatmap.png")


def _plot_best_curves(best: pd.DataFrame, swept: list[str], words: bool, baseline: tuple[str, float] | None,
                      out_dir: Path) -> Path:
    """The best runs' curves overlaid: val loss solid (a marker where a run evaluated once), the
    training minibatch loss faint; the legend below the axes."""
    from matplotlib.ticker import FormatStrFormatter
    fig, ax = figure((7, 5.2))
    for k, (_, row) in enumerate(best.iterrows()):
        curves = read_curve(Path(row["path"]) / "metrics.csv")
        label = ", ".join(f"{c.split('.')[-1]}={row[c]}" for c in swept) or f"job {row['job']}"
        color = f"C{k}"
        if curves["train/loss"]:
            ax.plot(*zip(*curves["train/loss"]), color=color, alpha=0.25, lw=0.8)
        if curves["val/loss"]:
            ax.plot(*zip(*curves["val/loss"]), color=color, lw=1.8, marker="o" if len(curves["val/loss"]) < 3 else None,
                    label=f"{label} ({row['val_loss']:.4f})")
    if not words:
        ax.axhline(LECTURE_LOSS, color="grey", ls="--", lw=0.8, label=f"lecture {LECTURE_LOSS}")
    if baseline:
        ax.axhline(baseline[1], color="tab:red", ls=":", lw=1, label=f"{baseline[0]} {baseline[1]:.4f}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("best runs: val (solid) and train minibatch (faint)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    return _save(fig, out_dir / "best_curves.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path
