"""Sweep reports: every job of one or more sweeps in a pandas DataFrame, a leaderboard, plots, a dashboard.

    python scripts/report.py outputs/sweeps/grid/2026-11-22_16-40-00 [more sweep folders] [--out DIR]

Writes leaderboard.csv, leaderboard.md, PNG plots and one self-contained dashboard.html (images
inlined) into the sweep folder, or into --out when several sweeps are compared.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from nplm.config import upgrade
from nplm.plots import figure, read_curve

LECTURE_LOSS = 2.17
# summary keys of records written before the held-out split was called val
OLD_NAMES = {"dev_loss": "val_loss", "best_dev_loss": "best_val_loss", "best_dev_step": "best_val_step",
             "dev_ppl": "val_ppl", "best_dev_ppl": "best_val_ppl"}
RESULT_COLUMNS = ["val_loss", "best_val_loss", "train_loss", "gap", "num_params", "wall_time_s", "status"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: its subfolders with a Hydra record or a summary."""
    jobs = [p for p in sweep_dir.iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").is_file())]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def load_jobs(sweep_dirs: list[Path]) -> pd.DataFrame:
    """One row per job: where it is, its status and error, its results, and its config flattened
    to dotted columns (model.n_embd, optim.lr, ...)."""
    rows = []
    for sweep in sweep_dirs:
        for job in job_dirs(sweep):
            try:
                summary = json.loads((job / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                summary = {"status": "incomplete", "error": "no summary.json (still running, or killed)"}
            summary = {OLD_NAMES.get(k, k): v for k, v in summary.items()}  # a record from before the rename
            if summary.get("mode", "train") != "train":
                continue  # a tool's run (mode=lr_find, overfit_batch): no val loss to rank
            row = {"sweep": sweep.name, "job": job.name, "path": str(job), "status": summary.get("status"),
                   "error": summary.get("error", "")}
            for key in ("val_loss", "best_val_loss", "train_loss", "val_ppl", "train_ppl", "num_params",
                        "wall_time_s", "steps_per_s"):
                row[key] = summary.get(key, math.nan)
            config = upgrade(summary.get("config") or _config_from_hydra(job))
            if config:
                row.update(pd.json_normalize(config).iloc[0].to_dict())
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["gap"] = df["val_loss"] - df["train_loss"]  # overfitting shows as a growing gap
    df["num_params"] = df["num_params"].astype("Int64")  # failed jobs have none
    return df


def _config_from_hydra(job: Path) -> dict:
    """A job that failed before training has no config in its summary: read Hydra's copy."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return {}


def swept_columns(df: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between jobs: the hyperparameters this sweep explores."""
    config_cols = [c for c in df.columns if "." in c or c in ("seed", "device")]
    return [c for c in config_cols if df[c].astype(str).nunique(dropna=False) > 1]


def word_level(df: pd.DataFrame) -> bool:
    """Whether the jobs model words (data.level=word): perplexity is their figure, 2.17 is not their bar."""
    return "data.level" in df.columns and (df["data.level"] == "word").any()


def leaderboard(df: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    results = RESULT_COLUMNS[:1] + ["val_ppl"] + RESULT_COLUMNS[1:] if word_level(df) else RESULT_COLUMNS
    cols = (["sweep"] if df["sweep"].nunique() > 1 else []) + ["job"] + swept + results + ["error"]
    board = df.sort_values("val_loss", na_position="last")[cols].reset_index(drop=True)
    board.index = board.index + 1
    board.index.name = "rank"
    return board


def count_baseline(df: pd.DataFrame) -> tuple[str, float] | None:
    """The Kneser-Ney n-gram's val loss on the data and split the jobs used (if they all used one):
    the bar a neural model has to clear to be worth its training (docs/reference.md). Order 6 for
    characters, 5 (or the most the vocabulary allows) for words."""
    from nplm.config import DataConfig
    from nplm.data import load_data
    from nplm.ngram import NGram, max_order
    keys = [c for c in df.columns if c.startswith("data.")]
    if not keys or len(df[keys].astype(str).drop_duplicates()) != 1:
        return None
    fields = DataConfig.__dataclass_fields__
    given = {k.split(".", 1)[1]: None if pd.isna(v) else getattr(v, "item", lambda: v)()  # numpy -> Python
             for k, v in df[keys].iloc[0].items() if k.split(".", 1)[1] in fields}
    d = DataConfig(**{name: f.default for name, f in fields.items() if name not in given}, **given)
    order = 6 if d.level == "char" else 5
    try:
        data = load_data(d, order - 1)
    except (ValueError, TypeError):  # the data moved or changed since the sweep: no baseline, the rest stands
        return None
    order = min(order, max_order(data.vocab.size))
    model = NGram(order, data.vocab.size, data.X["train"].shape[1]).fit(data.X["train"], data.Y["train"])
    return f"Kneser-Ney {order}-gram", -model.log_prob(data.X["val"], data.Y["val"]).mean().item()


def write_report(sweep_dirs: list[Path], out_dir: Path) -> Path:
    """Leaderboard (CSV, Markdown), plots (PNG) and dashboard.html for the jobs of `sweep_dirs`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_jobs(sweep_dirs)
    if df.empty:
        raise ValueError(f"no jobs found in {', '.join(map(str, sweep_dirs))}")
    swept = swept_columns(df)
    board = leaderboard(df, swept)
    board.to_csv(out_dir / "leaderboard.csv")
    # a job without a value (failed, diverged) shows an empty cell: missingval covers None only, not NaN
    blank = board.astype(object).where(board.notna(), None)
    (out_dir / "leaderboard.md").write_text(blank.to_markdown(floatfmt=".4f", missingval="") + "\n")
    baseline = count_baseline(df)
    plots = make_plots(df, swept, out_dir, baseline)
    (out_dir / "dashboard.html").write_text(dashboard_html(df, board, swept, plots, sweep_dirs, baseline))
    return out_dir


def make_plots(df: pd.DataFrame, swept: list[str], out_dir: Path,
               baseline: tuple[str, float] | None = None) -> dict[str, Path]:
    """The sweep's PNGs: val loss against each swept key, a heatmap over two, the best runs' curves,
    the best run's embedding. Returns them by title."""
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
    """Val loss against one swept hyperparameter: each job, and the mean at each value."""
    fig, ax = figure((5.5, 3.6))
    x = done[col]
    numeric = pd.api.types.is_numeric_dtype(x)
    pos = x if numeric else x.astype(str)
    ax.scatter(pos, done["val_loss"], alpha=0.7, label="job")
    means = done.groupby(pos)["val_loss"].mean()
    ax.plot(means.index, means.values, color="tab:orange", marker="o", label="mean")
    if numeric and x.min() > 0 and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    if not words:
        ax.axhline(LECTURE_LOSS, color="grey", ls="--", lw=0.8, label="lecture 2.17")
    if baseline:
        ax.axhline(baseline[1], color="tab:red", ls=":", lw=1, label=f"{baseline[0]} {baseline[1]:.4f}")
    ax.set_xlabel(col)
    ax.set_ylabel("val loss")
    ax.set_title(f"val loss vs {col}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir / f"val_vs_{col.replace('.', '_')}.png")


def _plot_heatmap(done: pd.DataFrame, a: str, b: str, out_dir: Path) -> Path:
    """The mean val loss over the values of two swept keys, each cell labelled."""
    table = done.pivot_table(index=a, columns=b, values="val_loss", aggfunc="mean")
    fig, ax = figure((1.2 * len(table.columns) + 3, 0.6 * len(table.index) + 2.2))
    im = ax.imshow(table.values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
    ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    lo, hi = im.get_clim()
    for (i, j), v in pd.DataFrame(table.values).stack().items():
        light = (v - lo) < 0.5 * (hi - lo)  # viridis_r is light (yellow) at low loss
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="black" if light else "white", fontsize=9)
    fig.colorbar(im, ax=ax, label="val loss")
    ax.set_title("mean val loss")
    return _save(fig, out_dir / "heatmap.png")


def _plot_best_curves(best: pd.DataFrame, swept: list[str], words: bool, baseline: tuple[str, float] | None,
                      out_dir: Path) -> Path:
    """The best runs' curves overlaid: val loss solid, the training minibatch loss faint."""
    from matplotlib.ticker import FormatStrFormatter
    fig, ax = figure((7, 4.2))
    for k, (_, row) in enumerate(best.iterrows()):
        curves = read_curve(Path(row["path"]) / "metrics.csv")
        label = ", ".join(f"{c.split('.')[-1]}={row[c]}" for c in swept) or f"job {row['job']}"
        color = f"C{k}"
        if curves["train/loss"]:
            ax.plot(*zip(*curves["train/loss"]), color=color, alpha=0.25, lw=0.8)
        if curves["val/loss"]:
            ax.plot(*zip(*curves["val/loss"]), color=color, lw=1.8, label=f"{label} ({row['val_loss']:.4f})")
    if not words:
        ax.axhline(LECTURE_LOSS, color="grey", ls="--", lw=0.8)
    if baseline:
        ax.axhline(baseline[1], color="tab:red", ls=":", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("best runs: val (solid) and train minibatch (faint)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "best_curves.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def dashboard_html(df: pd.DataFrame, board: pd.DataFrame, swept: list[str], plots: dict[str, Path],
                   sweep_dirs: list[Path], baseline: tuple[str, float] | None = None) -> str:
    """One HTML file, images inlined as base64, readable offline."""
    counts = df["status"].value_counts().to_dict()
    done = df[df["status"] == "finished"]
    headline = "no job finished"
    if not done.empty:
        best = done.loc[done["val_loss"].idxmin()]
        setting = ", ".join(f"{c}={best[c]}" for c in swept) or f"job {best['job']}"
        if word_level(df):  # words: perplexity is the figure people compare; 2.17 is a character-level bar
            headline = (f"best val loss <b>{best['val_loss']:.4f}</b> nats per token, perplexity "
                        f"<b>{math.exp(best['val_loss']):.1f}</b> ({setting}).")
        else:
            verdict = "beats" if best["val_loss"] < LECTURE_LOSS else "does not beat"
            n_beat = int((done["val_loss"] < LECTURE_LOSS).sum())
            headline = (f"best val loss <b>{best['val_loss']:.4f}</b> ({setting}); it {verdict} the lecture's "
                        f"{LECTURE_LOSS}. {n_beat} of {len(done)} finished jobs beat it.")
        if baseline:
            name, val = baseline
            n_count = int((done["val_loss"] < val).sum())
            headline += (f"<br>Count baseline on the same split: {name}, val loss <b>{val:.4f}</b> "
                         f"(perplexity {math.exp(val):.1f}; red dotted line); {n_count} of {len(done)} "
                         "finished jobs beat it.")
    spread = ""
    if "seed" in swept and len(done) > 1:
        others = [c for c in swept if c != "seed"]
        g = done.groupby(others)["val_loss"] if others else done.groupby(lambda _: "all")["val_loss"]
        stats = g.agg(["mean", "std", "min", "max", "count"])
        spread = "<h2>Seed-to-seed spread of val loss</h2>" + stats.to_html(float_format="%.4f")
    images = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, path in plots.items())
    shown = board.reset_index().astype(object)
    table = shown.where(shown.notna(), "").to_html(float_format=lambda v: f"{v:.4f}", index=False, escape=True)
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nplm sweep report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
.meta {{ color: #555; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f0f0f0; }}
td:nth-last-child(-n+2) {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 560px; border: 1px solid #ddd; }}
figcaption {{ text-align: center; color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>nplm sweep report</h1>
<p class="meta">{html.escape(', '.join(str(d) for d in sweep_dirs))}<br>
{len(df)} jobs: {html.escape(status)}. Swept: {html.escape(', '.join(swept) or 'nothing')}.</p>
<p>{headline}</p>
<h2>Plots</h2>
{images or '<p>No finished job to plot.</p>'}
{spread}
<h2>Leaderboard (sorted by val loss)</h2>
{table}
</body></html>
"""
