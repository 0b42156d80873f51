"""Summarise one or more sweeps, or runs side by side: leaderboard (CSV, Markdown), plots and a
self-contained, interactive dashboard.html.

    python scripts/report.py outputs/sweeps/grid/2026-11-22_16-40-00
    python scripts/report.py outputs/sweeps/grid/A outputs/sweeps/lr_batch/B --out outputs/reports/compare
    python scripts/report.py outputs/runs/A outputs/runs/B          # two single runs, side by side
Run automatically as a sweep runs and when it ends; run it by hand to compare sweeps or runs, or to
refresh a report. Compared, only the keys that differ between the jobs are shown.
"""
import argparse
import sys
import time
from pathlib import Path

from nplm.cli import fail
from nplm.sweep.jobs import is_run
from nplm.sweep.report import write_report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (each holds job folders 0, 1, ...) "
                        "or run folders (each holds a run's summary.json)")
    parser.add_argument("--out", type=Path, help="where to write (default: the sweep folder; "
                        "outputs/reports/<time> when comparing several)")
    args = parser.parse_args(argv)
    for d in args.sweeps:
        if not d.exists():
            fail(f"{str(d)!r} does not exist; give a sweep folder such as outputs/sweeps/<name>/<date_time> "
                 "or a run folder such as outputs/runs/<date_time>")
        if not d.is_dir():
            fail(f"{str(d)!r} is not a folder; give a sweep folder such as outputs/sweeps/<name>/<date_time> "
                 "or a run folder such as outputs/runs/<date_time>")
    single_sweep = len(args.sweeps) == 1 and not is_run(args.sweeps[0])
    out = args.out or (args.sweeps[0] if single_sweep else Path("outputs/reports") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    try:
        write_report(args.sweeps, out)
    except ValueError as e:
        fail(str(e))
    print(f"leaderboard: {out / 'leaderboard.md'}\ndashboard: {out / 'dashboard.html'}")
    print((out / "leaderboard.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
