"""A sweep's dashboard: one self-contained HTML file (plotly, inlined once) that opens offline.

Views: where the sweep stands (live: it reloads itself until the sweep ends), parallel coordinates of
the swept values and val loss, every run's val and train curves, val loss against each swept value,
which hyperparameters matter, a heatmap over two keys, the seed-to-seed spread, the best run's
config and the commands that rerun it, and a sortable leaderboard whose rows link to their runs'
files. Every loss view draws the lecture's 2.17 (characters) and the Kneser-Ney baseline. Long
curves are thinned to at most MAX_POINTS points each (means of equal runs of points), so a 100-job
sweep stays light.
"""
from __future__ import annotations

import base64
import functools
import html
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nplm.plots import LECTURE_LOSS
from nplm.sweep.jobs import rerun_command, word_level
from nplm.sweep.pngs import axis_kind, category_order

REFRESH_S = 30  # a live dashboard reloads itself this often
MAX_POINTS = 300  # points per curve at most (longer ones: the means of equal runs of points)
RUN_FILES = ("train.log", "metrics.csv", "summary.json", "config.yaml", "loss.png", "embedding.png", "samples.tsv")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png"}}
SORT_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir === 1 ? "asc" : "desc";
  const key = r => { const c = r.cells[col]; const v = c.dataset.v ?? c.textContent.trim();
                     return v === "" ? null : (isNaN(Number(v)) ? v : Number(v)); };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);  // empty cells last, either way
    return (x < y ? -1 : x > y ? 1 : 0) * dir; });
  rows.forEach(r => body.appendChild(r));
}));
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.meta, .note { color: #555; } .note { font-size: 0.9em; max-width: 60em; }
.status { padding: 0.5em 0.8em; border-radius: 4px; background: #eef4fb; display: inline-block; }
.status.ended { background: #f2f2f2; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } table.sortable th { cursor: pointer; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.text { text-align: left; } td.failed, td.diverged, td.unreadable { color: #b00; } td.running { color: #06c; }
td.files a { margin-right: 0.4em; }
pre { background: #f7f7f7; padding: 0.7em; overflow-x: auto; font-size: 0.85em; max-height: 30em; }
"""


def dashboard_html(df: pd.DataFrame, board: pd.DataFrame, swept: list[str], folders: list[Path], out_dir: Path,
                   baseline: tuple[str, float] | None = None, state: dict | None = None) -> list[str]:
    """The whole page, in parts to write one after another (plotly.js alone is 4.8 MB). `board` is the
    leaderboard (nplm/sweep/jobs.py), `state` where the sweep stands."""
    state = state or {}
    words = not df.empty and word_level(df)
    refs = _references(words, baseline)
    done = df[(df["status"] == "finished") & df["val_loss"].notna()] if not df.empty else df
    labels, colours = _labels(board, swept), _colours(board)  # each run's label and colour, the same in every view
    sections = []  # (anchor, title, html)
    if not df.empty:
        if swept and len(done) > 1:
            sections.append(("parallel", "Parallel coordinates", _div(_parallel(done, swept, refs, colours), "parallel")
                             + _note("Drag along an axis to select a range of it; the lines left are the runs "
                                     "inside every selection. Colour: rank by val loss, each run's colour "
                                     "in the curves below too.")))
        curves = _curves(df, board, labels, colours, refs)
        if curves is not None:
            sections.append(("curves", "Every run's curves", _div(curves, "curves") + _note(
                "Click a run in the legend to hide it (both its curves), double-click to show it alone; drag "
                "to zoom, double-click the plot to zoom out. Curves longer than "
                f"{MAX_POINTS} points show the means of {MAX_POINTS} equal runs of them.")))
        if swept and not done.empty:
            sections.append(("values", "Val loss against each swept value",
                             _div(_against(done, swept, labels, colours, refs), "values")))
        if [c for c in swept if c != "seed"] and len(done) >= 3:
            sections.append(("importance", "Which hyperparameters matter",
                             _div(_importance(done, swept), "importance") + _importance_note(swept)))
        if len(swept) == 2 and len(done) > 1:
            sections.append(("heatmap", "Mean val loss over two keys", _div(_heatmap(done, *swept), "heatmap")))
        spread = _seed_spread(done, swept)
        if spread:
            sections.append(("spread", "Seed-to-seed spread of val loss", spread))
        if not done.empty:
            sections.append(("best", "The best run", _best_run(done, out_dir)))
        sections.append(("leaderboard", "Leaderboard", _leaderboard_table(board, out_dir)))
        pngs = sorted(p.name for p in out_dir.glob("*.png"))
        if pngs:
            sections.append(("pngs", "Static plots", " ".join(
                f'<a href="{html.escape(p)}">{html.escape(p)}</a>' for p in pngs)))
    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    sections_html = [f'\n<h2 id="{a}">{html.escape(t)}</h2>\n{h}' for a, t, h in sections]
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if state.get("live") else ""
    where = folders[0].name if folders[0].parent.name == "sweeps" else f"{folders[0].parent.name}/{folders[0].name}"
    title = (f"nplm sweep {where}" if len(folders) == 1 and state
             else f"nplm: {len(df)} runs compared" if len(df) != 1 else f"nplm run {folders[0].name}")
    head = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script>"""
    return [head, plotly_js(), f"""</script></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(', '.join(str(d) for d in folders))}<br>
{_jobs(max(len(df), state.get('planned') or 0))}{': ' + html.escape(_count_text(df, state.get('waiting', 0),
                                                                       state.get('tool_runs', 0)))
                                                   if not df.empty or state.get('waiting') or state.get('tool_runs')
                                                   else ''}.
Swept: {html.escape(', '.join(swept or state.get('swept') or []) or 'nothing')}.</p>
{_status(state, df)}
<p>{_headline(df, done, swept, baseline, words)}</p>
<nav>{nav}</nav>
""", *sections_html, f"""
<script>{SORT_JS}</script>
</body></html>
"""]


@functools.cache
def plotly_js() -> str:
    """plotly.js, read once per process (a live sweep writes its dashboard at every job's start and end)."""
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def _div(fig, div_id: str) -> str:
    """The figure's div (id `<div_id>-plot`: the section's heading has the id `div_id`) and its script."""
    import plotly.io as pio
    height = fig["layout"]["height"]
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"{div_id}-plot", config=PLOT_CONFIG,
                       default_height=f"{height}px", validate=False)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _tool_runs(n: int) -> str:
    return f"{n} tool run" if n == 1 else f"{n} tool runs"


def _count_text(df: pd.DataFrame, waiting: int = 0, tools: int = 0) -> str:
    counts = df["status"].value_counts().items() if not df.empty else []
    return ", ".join([f"{n} {s}" for s, n in counts] + ([f"{waiting} not started"] if waiting else [])
                     + ([_tool_runs(tools)] if tools else []))


def _status(state: dict, df: pd.DataFrame) -> str:
    """Live: counts, jobs waiting, time left, when written. Ended: when, and jobs that never ran."""
    if not state:
        return ""
    counts = state.get("counts", {})
    failed = sum(n for s, n in counts.items() if s not in ("finished", "running"))
    parts = [f"{counts.get('finished', 0)} finished", f"{counts.get('running', 0)} running", f"{failed} failed",
             f"{state.get('waiting', 0)} waiting"]
    now = time.strftime("%H:%M:%S")
    if state.get("live"):
        left = state.get("time_left_s")
        eta = ("time left: known once a job ends" if left is None else f"about {_duration(left)} left" if left
               else "every job has ended; the report is being written")
        return (f'<p class="status"><b>running</b>: {", ".join(parts)}; {eta}. Updated {now}; this page '
                f"reloads itself every {REFRESH_S} s until the sweep ends.</p>")
    never = state.get("waiting", 0)
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["ended"])) if state.get("ended") else None
    text = f"<b>ended</b> {ended}" if ended else "<b>not running</b>"
    text += f": {_jobs(len(df))} ({html.escape(_count_text(df)) if not df.empty else 'none'})"
    tools = state.get("tool_runs", 0)
    if tools:
        text += (f"; {_tool_runs(tools)} (mode=lr_find or overfit_batch), not ranked: "
                 "their plots are in their folders")
    if never:
        text += f"; {never} never started: run the sweep's command again to run them"
    return f'<p class="status ended">{text}.</p>'


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _headline(df: pd.DataFrame, done: pd.DataFrame, swept: list[str], baseline, words: bool) -> str:
    if done.empty:
        return "No job has finished yet." if not df.empty else "No job has started yet."
    best = done.loc[done["val_loss"].idxmin()]
    setting = ", ".join(f"{c}={best[c]}" for c in swept) or f"job {best['job']}"
    if words:  # words: perplexity is the figure people compare; 2.17 is a character-level bar
        text = (f"best val loss <b>{best['val_loss']:.4f}</b> nats per token, perplexity "
                f"<b>{math.exp(best['val_loss']):.1f}</b> ({html.escape(setting)}).")
    else:
        verdict = "beats" if best["val_loss"] < LECTURE_LOSS else "does not beat"
        n_beat = int((done["val_loss"] < LECTURE_LOSS).sum())
        text = (f"best val loss <b>{best['val_loss']:.4f}</b> ({html.escape(setting)}); it {verdict} the "
                f"lecture's {LECTURE_LOSS}. {n_beat} of {len(done)} finished jobs beat it.")
    if baseline:
        name, val = baseline
        n_count = int((done["val_loss"] < val).sum())
        text += (f"<br>Count baseline on the same split: {name}, val loss <b>{val:.4f}</b> "
                 f"(perplexity {math.exp(val):.1f}; the red dotted line); {n_count} of {len(done)} "
                 "finished jobs beat it.")
    return text


def _references(words: bool, baseline) -> list[tuple[float, str, dict]]:
    """The horizontal lines of every loss view: (loss, label, line style)."""
    refs = [] if words else [(LECTURE_LOSS, f"lecture {LECTURE_LOSS}", dict(color="grey", dash="dash", width=1))]
    if baseline:
        refs.append((baseline[1], f"{baseline[0]} {baseline[1]:.4f}", dict(color="#d62728", dash="dot", width=1.5)))
    return refs


def _subplots(rows: int, cols: int, titles, height: int, **spacing) -> dict:
    """An empty figure as plotly's JSON (data, layout), its subplots laid out by make_subplots. The
    traces are added as dicts and drawn without plotly's validation of every property (its objects
    take ~5 ms a trace: seconds for a 100-job sweep, at each live update)."""
    import plotly.io as pio
    from plotly.subplots import make_subplots
    layout = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **spacing).layout.to_plotly_json()
    layout.update(height=height, margin=dict(t=40, b=40, l=60, r=20), hovermode="closest", legend=dict(font_size=10),
                  template=pio.templates["plotly_white"].to_plotly_json())
    return {"data": [], "layout": layout}


def _axis(fig: dict, letter: str, n: int, **props) -> None:
    """Update subplot n's (1-based) x or y axis."""
    fig["layout"].setdefault(f"{letter}axis{n if n > 1 else ''}", {}).update(props)


def _add_references(fig: dict, refs, subplots: int, log: bool = False) -> None:
    """The reference lines across every subplot, labelled in the first. On a log axis plotly takes a
    shape's y as data but an annotation's as log10 of it."""
    layout = fig["layout"]
    for y, label, line in refs:
        for n in range(1, subplots + 1):
            suffix = n if n > 1 else ""
            layout.setdefault("shapes", []).append(dict(type="line", xref=f"x{suffix} domain", x0=0, x1=1,
                                                        yref=f"y{suffix}", y0=y, y1=y, line=line))
        layout.setdefault("annotations", []).append(dict(
            x=0, xref="x domain", y=math.log10(y) if log else y, yref="y", text=label, showarrow=False,
            xanchor="left", yanchor="bottom", font=dict(size=10, color=line["color"])))


def _labels(board: pd.DataFrame, swept: list[str]) -> dict[str, str]:
    """Each job's name in legends and hovers, by its path: its rank, its swept values (short keys) and its
    job number ("rank 1: n_embd=8 (job 3)"; Hydra's "#3" is the job number, so the rank does not use #)."""
    if board.empty:
        return {}
    short = {c: c.split(".")[-1] for c in swept}
    if len(set(short.values())) < len(short):
        short = {c: c for c in swept}
    many = "sweep" in board.columns
    labels = {}
    for rank, row in board.iterrows():
        values = ", ".join(f"{short[c]}={_fmt(row[c])}" for c in swept) or f"job {row['job']}"
        where = f"{row['sweep']}/{row['job']}" if many else f"job {row['job']}"
        suffix = f" ({where})" if swept else (f" ({row['sweep']})" if many else "")
        labels[str(row["path"])] = f"rank {rank}: {values}{suffix}"
    return labels


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _colours(board: pd.DataFrame) -> dict[str, str]:
    """A colour per job by rank (dark: best; grey: no val loss), the same in every view."""
    from plotly.colors import sample_colorscale
    if board.empty:  # a sweep that has just started: no jobs yet
        return {}
    ranked = board[board["val_loss"].notna()]["path"].astype(str).tolist()
    scale = sample_colorscale("Viridis", np.linspace(0, 0.85, len(ranked)).tolist()) if ranked else []
    colours = dict(zip(ranked, scale))
    for p in board["path"].astype(str):
        colours.setdefault(p, "#999999")
    return colours


def _read_curves(metrics_csv: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{'train/loss': (steps, losses), 'val/loss': (...)} from a run's metrics.csv; None if it has none
    (yet) or cannot be read."""
    try:
        table = pd.read_csv(metrics_csv)
    except (OSError, ValueError):
        return None
    curves = {}
    for key in ("val/loss", "train/loss"):
        rows = table[["step", key]].dropna() if key in table else table.iloc[:0]
        curves[key] = (rows["step"].to_numpy(), rows[key].to_numpy(dtype=float)) if key in table else ([], [])
    return curves


def _thin(steps, losses) -> tuple[list, list]:
    """At most MAX_POINTS points: a longer curve becomes the means of MAX_POINTS equal runs of points,
    each at its last step (the noise of a minibatch loss averaged, not dropped; the last point kept)."""
    steps, losses = np.asarray(steps), np.asarray(losses, dtype=float)
    if len(steps) > MAX_POINTS:
        edges = np.linspace(0, len(steps), MAX_POINTS + 1).round().astype(int)
        losses = np.add.reduceat(losses, edges[:-1]) / np.diff(edges)
        steps = steps[edges[1:] - 1]
    return steps.tolist(), losses.tolist()


def _curves(df: pd.DataFrame, board: pd.DataFrame, labels: dict, colours: dict, refs) -> dict | None:
    """Val loss (left) and the training minibatch loss (right) of every run with metrics, one legend
    entry per run that shows or hides both of its curves. None if no run has metrics yet."""
    fig = _subplots(1, 2, ("val loss (whole val split)", "train loss (minibatch)"), 560, horizontal_spacing=0.07)
    status = dict(zip(df["path"].astype(str), df["status"]))
    for path in board["path"].astype(str):
        curves = _read_curves(Path(path) / "metrics.csv")
        if curves is None:
            continue  # no metrics yet (a job just started), or unreadable
        label, running = labels[path], status.get(path) == "running"
        for n, key in ((1, "val/loss"), (2, "train/loss")):
            if not len(curves[key][0]):
                continue
            x, y = _thin(*curves[key])
            fig["data"].append(dict(
                type="scatter", x=x, y=y, name=label + (" [running]" if running else ""), legendgroup=path,
                showlegend=n == 1 or not len(curves["val/loss"][0]), xaxis=f"x{n if n > 1 else ''}",
                yaxis=f"y{n if n > 1 else ''}", mode="lines+markers" if len(x) < 3 else "lines",
                line=dict(color=colours[path], width=1.8 if n == 1 else 1, dash="dot" if running else "solid"),
                opacity=1.0 if n == 1 else 0.7,
                hovertemplate=f"{html.escape(label)}<br>step %{{x}}<br>{key} %{{y:.4f}}<extra></extra>"))
    if not fig["data"]:
        return None
    _add_references(fig, refs, 2, log=True)
    for n in (1, 2):
        _axis(fig, "y", n, type="log", title=dict(text="loss (log scale)"))
        _axis(fig, "x", n, title=dict(text="step"), rangemode="tozero")
    return fig


def _against(done: pd.DataFrame, swept: list[str], labels: dict, colours: dict, refs) -> dict:
    """Val loss against each swept key: one subplot per key, one trace per run (a legend entry shows or
    hides the run in every subplot), and the mean at each value: a line over numbers, a bar at each
    category (seeds and choices are not a scale). Log axes for log-spaced values."""
    ncols = min(3, len(swept))
    nrows = math.ceil(len(swept) / ncols)
    fig = _subplots(nrows, ncols, swept, 330 * nrows + 40, horizontal_spacing=0.08,
                    vertical_spacing=0.22 / nrows if nrows > 1 else 0.1)
    done = done.sort_values("val_loss", kind="stable")  # the legend in rank order
    for i, col in enumerate(swept):
        n = i + 1
        axes = dict(xaxis=f"x{n if n > 1 else ''}", yaxis=f"y{n if n > 1 else ''}")
        kind = axis_kind(done[col], col)
        xs = done[col].astype(str) if kind == "category" else done[col]
        for path, x, loss in zip(done["path"].astype(str), xs, done["val_loss"]):
            fig["data"].append(dict(type="scatter", x=[_json(x)], y=[loss], name=labels[path], legendgroup=path,
                                    showlegend=i == 0, mode="markers", marker=dict(color=colours[path], size=9),
                                    hovertemplate=f"{html.escape(labels[path])}<br>val loss %{{y:.4f}}<extra></extra>",
                                    **axes))
        means = done.groupby(xs)["val_loss"].mean()
        mean = dict(type="scatter", name="mean at each value", legendgroup="mean", showlegend=i == 0,
                    hovertemplate="mean %{y:.4f}<extra></extra>", **axes)
        if kind == "category":
            order = category_order(done[col])
            shown = [v for v in order if v in means.index]
            fig["data"].append(dict(mean, x=shown, y=[means[v] for v in shown], mode="markers",
                                    marker=dict(symbol="line-ew-open", size=34, color="#ff7f0e", line=dict(width=3))))
            _axis(fig, "x", n, type="category", categoryorder="array", categoryarray=order)
        else:
            fig["data"].append(dict(mean, x=[_json(v) for v in means.index], y=means.values.tolist(), mode="lines",
                                    line=dict(color="#ff7f0e", width=2)))
            if kind == "log":
                unique = sorted(done[col].astype(float).unique())
                ticks = dict(tickvals=unique, ticktext=[f"{v:g}" for v in unique]) if len(unique) <= 8 else {}
                _axis(fig, "x", n, type="log", **ticks)
    _add_references(fig, refs, len(swept))
    _axis(fig, "y", 1, title=dict(text="val loss"))
    return fig


def _json(v):
    """A value as JSON has it (numpy numbers to Python's)."""
    return v.item() if hasattr(v, "item") else v


def _parallel(done: pd.DataFrame, swept: list[str], refs, colours: dict) -> dict:
    """One line per finished run across an axis per swept key and one for val loss, each in its colour
    in the other views (by rank: a parcoords line takes a number on a colour scale, so the scale is
    made of the runs' colours, one stop per run)."""
    dims = []
    for col in swept:
        kind = axis_kind(done[col], col)
        if kind == "category":
            order = category_order(done[col])
            dims.append(dict(label=col, values=[order.index(str(v)) for v in done[col]],
                             tickvals=list(range(len(order))), ticktext=order))
        elif kind == "log":
            unique = np.unique(done[col].astype(float))
            ticks = unique if len(unique) <= 8 else 10.0 ** np.arange(np.floor(np.log10(unique[0])),
                                                                      np.ceil(np.log10(unique[-1])) + 1)
            dims.append(dict(label=f"{col} (log)", values=np.log10(done[col].astype(float)).tolist(),
                             tickvals=np.log10(ticks).tolist(), ticktext=[f"{t:g}" for t in ticks]))
        else:
            dims.append(dict(label=col, values=done[col].astype(float).tolist()))
    loss = done["val_loss"].astype(float)
    lo, hi = float(loss.min()), float(loss.max())
    marks = [(y, label) for y, label, _ in refs if lo <= y <= hi]  # the lecture's bar, the count baseline
    ticks = [(v, f"{v:.3f}") for v in np.linspace(lo, hi, 5)] if hi > lo else [(lo, f"{lo:.4f}")]
    ticks = [t for t in ticks if all(abs(t[0] - y) > 0.06 * (hi - lo) for y, _ in marks)] + marks  # no overlaps
    dims.append(dict(label="val loss", values=loss.tolist(), tickvals=[t for t, _ in ticks],
                     ticktext=[t for _, t in ticks]))
    paths = done["path"].astype(str).tolist()
    ranked = sorted(range(len(paths)), key=lambda i: loss.iloc[i])
    position = {i: k for k, i in enumerate(ranked)}
    last = max(len(ranked) - 1, 1)
    scale = [[k / last, colours[paths[i]]] for k, i in enumerate(ranked)]
    if len(scale) == 1:
        scale.append([1.0, scale[0][1]])
    ends = [(0, f"best {loss.iloc[ranked[0]]:.4f}"), (len(ranked) - 1, f"worst {loss.iloc[ranked[-1]]:.4f}")]
    return {"data": [dict(type="parcoords", dimensions=dims,
                          line=dict(color=[position[i] for i in range(len(paths))], colorscale=scale, cmin=0,
                                    cmax=last, showscale=True,
                                    colorbar=dict(title=dict(text="rank"), tickvals=[v for v, _ in ends],
                                                  ticktext=[t for _, t in ends])))],
            "layout": dict(height=430, margin=dict(t=60, b=30, l=80, r=40))}


def importance(done: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """For each swept key: the share of the val loss's variance its values explain alone (eta squared:
    a main effect; keys with many distinct numbers are cut into 5 quantile bins first) and the rank
    correlation of its value with the val loss (numbers only). Sorted, largest share first."""
    y = done["val_loss"].astype(float)
    total = ((y - y.mean()) ** 2).sum()
    rows = []
    for col in swept:
        x = done[col]
        kind = axis_kind(x, col)
        groups = x.astype(str) if kind == "category" else x
        if kind != "category" and x.nunique() > 8:
            groups = pd.qcut(x.astype(float), 5, duplicates="drop").astype(str)
        means = y.groupby(groups).transform("mean")
        share = float(((means - y.mean()) ** 2).sum() / total) if total > 0 else 0.0
        corr = float(x.astype(float).rank().corr(y.rank())) if kind != "category" else math.nan
        rows.append({"key": col, "share": share, "rank_corr": corr, "values": int(x.nunique())})
    return pd.DataFrame(rows).sort_values("share", ascending=False, kind="stable").reset_index(drop=True)


def _importance(done: pd.DataFrame, swept: list[str]) -> dict:
    table = importance(done, swept).iloc[::-1]  # largest at the top
    hover = [f"{k}: explains {s:.0%} of the val loss's variance alone"
             + (f"; rank correlation with val loss {c:+.2f}" if not math.isnan(c) else "") + f" ({n} values)"
             for k, s, c, n in table[["key", "share", "rank_corr", "values"]].itertuples(index=False)]
    bar = dict(type="bar", x=table["share"].tolist(), y=table["key"].tolist(), orientation="h",
               marker=dict(color="#1f77b4"), text=[f"{s:.0%}" for s in table["share"]], textposition="auto",
               hovertext=hover, hoverinfo="text")
    return {"data": [bar], "layout": dict(height=90 + 36 * len(table), margin=dict(t=20, b=40, l=160, r=20),
                                          xaxis=dict(title=dict(text="share of val-loss variance explained alone"),
                                                     range=[0, 1], tickformat=".0%"))}


def _importance_note(swept: list[str]) -> str:
    text = ("Each bar: how much of the spread of val loss across the finished runs one key explains on its "
            "own (eta squared, from the mean val loss at each of its values). Hover for its rank correlation "
            "with val loss. Shares need a grid or many runs to mean much.")
    if "seed" in swept:
        text += " The seed's share is the noise level: a key at or below it does not matter in this sweep."
    return _note(text)


def _heatmap(done: pd.DataFrame, a: str, b: str) -> dict:
    table = done.pivot_table(index=a, columns=b, values="val_loss", aggfunc="mean")
    z = [[None if math.isnan(v) else v for v in row] for row in table.values.tolist()]  # a missing cell: empty
    heat = dict(type="heatmap", z=z, x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
                colorscale="Viridis", colorbar=dict(title=dict(text="val loss")), texttemplate="%{z:.4f}",
                hovertemplate=f"{a}=%{{y}}<br>{b}=%{{x}}<br>mean val loss %{{z:.4f}}<extra></extra>")
    return {"data": [heat], "layout": dict(height=120 + 50 * len(table.index), margin=dict(t=20, b=50, l=80, r=20),
                                           xaxis=dict(type="category", title=dict(text=b)),
                                           yaxis=dict(type="category", title=dict(text=a),
                                                      autorange="reversed"))}  # rows as in heatmap.png


def _seed_spread(done: pd.DataFrame, swept: list[str]) -> str:
    if "seed" not in swept or len(done) < 2:
        return ""
    others = [c for c in swept if c != "seed"]
    g = done.groupby(others)["val_loss"] if others else done.groupby(lambda _: "all")["val_loss"]
    return g.agg(["mean", "std", "min", "max", "count"]).to_html(float_format="%.4f")


def _best_run(done: pd.DataFrame, out_dir: Path) -> str:
    """The best run's commands (train it again; re-run and compare) and its whole config."""
    best = done.loc[done["val_loss"].idxmin()]
    job = Path(best["path"])
    command = rerun_command(job)
    try:
        config = (job / "config.yaml").read_text()
    except OSError:
        config = json.dumps(json.loads((job / "summary.json").read_text()).get("config"), indent=2)
    lines = [f"<p>job {html.escape(str(best['job']))} (<a href=\"{_href(job, out_dir)}\">its folder</a>), val "
             f"loss {best['val_loss']:.4f}.</p>"]
    if command:
        lines.append(f"<p>Train it again as a single run:</p><pre>{html.escape(command)}</pre>")
    lines.append("<p>Re-run it from its saved config and check the numbers come back bit for bit:</p>"
                 f"<pre>python scripts/reproduce.py {html.escape(str(job))}</pre>")
    lines.append(f"<details open><summary>its config (config.yaml)</summary><pre>{html.escape(config)}</pre></details>")
    if (job / "embedding.png").is_file():  # inlined: the page stays one file
        data = base64.b64encode((job / "embedding.png").read_bytes()).decode()
        lines.append(f'<figure><img alt="the best run\'s embedding" style="max-width:480px" src="data:image/png;base64,'
                     f'{data}"><figcaption>its learned embeddings (embedding.png)</figcaption></figure>')
    return "\n".join(lines)


def _href(path: Path, out_dir: Path) -> str:
    """A link from the report's folder to `path` (relative, so the folder can be moved or copied)."""
    return html.escape(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir)), quote=True)


def _leaderboard_table(board: pd.DataFrame, out_dir: Path) -> str:
    """The leaderboard as a sortable table (click a header); each job links to its folder and files."""
    shown = board.reset_index().drop(columns="path")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns) + "<th>files</th>"
    rows = []
    for (_, row), path in zip(shown.iterrows(), board["path"].map(Path)):
        cells = []
        for col, v in row.items():
            missing = v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA
            text = "" if missing else (f"{v:.4f}" if isinstance(v, float) else str(v))
            raw = "" if missing else str(v)
            cls = "text" if col in ("error", "status", "sweep") or not _numeric(raw) else ""
            if col == "status":
                cls += f" {raw}"
            if col == "job":
                text = f'<a href="{_href(path, out_dir)}">{html.escape(text)}</a>'
            else:
                text = html.escape(text)
            cells.append(f'<td class="{cls.strip()}" data-v="{html.escape(raw, quote=True)}">{text}</td>')
        files = " ".join(f'<a href="{_href(path / f, out_dir)}">{f}</a>' for f in RUN_FILES if (path / f).is_file())
        rows.append(f"<tr>{''.join(cells)}<td class=\"text files\">{files}</td></tr>")
    return (_note("Click a column's header to sort by it; empty cells stay last.")
            + f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return not text
