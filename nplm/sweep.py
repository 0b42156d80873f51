"""Sweeps: folders, resuming, and the end-of-sweep report, around Hydra's multirun.

- Resume: the same command with `hydra.sweep.dir=<the interrupted sweep's folder>` (printed when a
  sweep starts) runs only the jobs that have not finished. A job whose folder already holds a
  finished run of the same config is skipped (its dev loss is returned); a finished run of a
  different config is never overwritten.
- The report is written when the sweep ends, also when some jobs failed: Hydra skips its
  `on_multirun_end` callback then, so train.py calls `write_report_if_sweep()` on its way out.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nplm.config import Config, ConfigError

log = logging.getLogger("nplm")
_sweep_dir: Path | None = None  # set in the launching process when a multirun starts


def finished_dev_loss(out_dir: Path, cfg: Config) -> float | None:
    """The dev loss of a finished run of this same config in out_dir (to skip it), else None.

    Raises ConfigError when out_dir holds a finished run of another config: it is never overwritten.
    """
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record of an unfinished run: run it again
    if summary.get("status") != "finished":
        return None
    if summary.get("config") != dataclasses.asdict(cfg):
        raise ConfigError(f"{out_dir} holds a finished run of a different config; it is never overwritten. "
                          "Start a new sweep folder with hydra.sweep.dir=... (or hydra.run.dir=...)")
    return summary["dev_loss"]


class SweepCallback(Callback):
    """Remembers the sweep folder in the launching process, for the report at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)
        resume = " ".join(a for a in sys.argv if not a.startswith("hydra.sweep.dir="))
        log.info("sweep folder: %s (if interrupted, resume with: python %s hydra.sweep.dir=%s)",
                 _sweep_dir, resume, _sweep_dir)


def write_report_if_sweep() -> None:
    """After a multirun (finished or not), summarise its folder; never raises."""
    if _sweep_dir is None or not _sweep_dir.is_dir():
        return
    try:
        from nplm.report import write_report
        out = write_report([_sweep_dir], _sweep_dir)
        print(f"sweep report: {out / 'dashboard.html'}")
    except Exception as e:  # the jobs' own records are safe; a report can be written later
        print(f"warning: could not write the sweep report ({type(e).__name__}: {e}); "
              f"run: python scripts/report.py {_sweep_dir}")
