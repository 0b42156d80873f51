"""Sweep reports: a leaderboard, PNG plots and an interactive dashboard for the jobs of one or more
sweeps, or of single runs side by side.

    python scripts/report.py outputs/sweeps/grid/2026-11-22_16-40-00 [more sweeps or run folders] [--out DIR]

Writes leaderboard.csv, leaderboard.md, PNG plots (nplm/sweep/pngs.py) and one self-contained,
interactive dashboard.html (nplm/sweep/dashboard.py) into the sweep folder, or into --out when
several are compared. While a sweep runs, its dashboard and leaderboard are rewritten as jobs start
and end (`write_live`, called by nplm/sweep/folders.py); the PNGs are drawn when it ends.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from nplm.sweep.jobs import (count_baseline, is_live, leaderboard, load_jobs, progress, swept_columns,
                             sweep_state, write_atomic)

log = logging.getLogger("nplm")


def write_report(folders: list[Path], out_dir: Path, pngs: bool = True) -> Path:
    """Leaderboard (CSV, Markdown), plots (PNG, unless `pngs` is False) and dashboard.html for the
    jobs of `folders` (sweeps or single runs)."""
    from nplm.sweep.dashboard import dashboard_html
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_jobs(folders)
    state = progress(folders, df)
    if df.empty and not state.get("live") and not state.get("tool_runs"):
        raise ValueError(f"no jobs found in {', '.join(map(str, folders))}")
    swept = swept_columns(df, state.get("swept")) if not df.empty else []  # the sweep's own order first
    board = leaderboard(df, swept) if not df.empty else pd.DataFrame()
    if not df.empty:
        write_atomic(out_dir / "leaderboard.csv", board.to_csv())
        # a job without a value (failed, diverged) shows an empty cell: missingval covers None only, not NaN
        shown = board.drop(columns="path")
        blank = shown.astype(object).where(shown.notna(), None)
        write_atomic(out_dir / "leaderboard.md", blank.to_markdown(floatfmt=".4f", missingval="") + "\n")
    else:  # nothing to rank (a sweep of tool runs): no board, not one a live report left of running jobs
        for name in ("leaderboard.csv", "leaderboard.md"):
            (out_dir / name).unlink(missing_ok=True)
    baseline = count_baseline(df, out_dir) if not df.empty else None
    if pngs and not df.empty:
        from nplm.sweep.pngs import make_plots
        make_plots(df, swept, out_dir, baseline)
    write_atomic(out_dir / "dashboard.html", dashboard_html(df, board, swept, folders, out_dir, baseline, state))
    return out_dir


def write_live(sweep_dir: Path) -> None:
    """Rewrite a running sweep's dashboard and leaderboard (no PNGs); never raises, never writes over
    the report of a sweep that has ended. Skipped while a vectorised group's jobs are still taking
    their training (the group's last job writes it)."""
    try:
        if not is_live(sweep_state(sweep_dir)) or any(sweep_dir.glob("*/vectorized.pt")):
            return
        write_report([sweep_dir], sweep_dir, pngs=False)
    except Exception as e:  # noqa: BLE001 - a dashboard must never stop a sweep
        log.warning("could not update the live dashboard (%s: %s)", type(e).__name__, e)
