"""Tracking: one place that records a run, to its folder (the record of truth) and to Weights & Biases.

Local files: metrics.csv (a row per logged step, flushed as it happens), summary.json (with what is
needed to repeat the run: `provenance`), samples.tsv.
W&B: the same metrics under the same keys, the resolved config, summary values, the samples as a
table and the plots as images (sent to a worker process, nplm/wandb_log.py, so W&B's start-up
overlaps the run's own). W&B runs offline unless told otherwise (no account, no network:
`wandb sync` uploads later). If W&B cannot start, training goes on with local files and one
warning; the W&B run is always finished, also when training raises, so the next job of an
in-process sweep never logs into it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import secrets
import string
import subprocess
import sys
from pathlib import Path

from nplm import repro
from nplm.config import WandbConfig
from nplm.wandb_log import Client

METRIC_COLUMNS = ("step", "train/loss", "val/loss", "lr", "elapsed")


def wandb_mode(cfg: WandbConfig) -> str:
    """The config's mode; else the user's WANDB_MODE (and WANDB_DISABLED); else offline."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").lower()
    return {"dryrun": "offline", "run": "online"}.get(env, env) if env else "offline"


class Tracker:
    """Records one run. With `resume_step`, continues the record of an interrupted run: metrics.csv
    keeps its rows up to that step (later ones, logged after the last saved state, are dropped, as
    the resumed run logs them again) and the W&B run `wandb_id` is continued. W&B is driven through
    nplm/wandb_log.py (a worker process where there is one): nothing here waits for it but `close`."""

    def __init__(self, out_dir: Path, wb: WandbConfig, config: dict, group: str | None = None,
                 name: str | None = None, resume_step: int | None = None, wandb_id: str | None = None):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        path, tmp = out_dir / "metrics.csv", out_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:  # then renamed: a kill now loses no rows
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(_rows_up_to(path, resume_step) if resume_step is not None else [])
        os.replace(tmp, path)
        self._file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        mode = wandb_mode(wb)
        self.wandb_id = None if mode == "disabled" else wandb_id or new_run_id()
        self.wandb = None if mode == "disabled" else Client(dict(
            mode=mode, dir=str(out_dir), project=wb.project, entity=wb.entity, group=wb.group or group,
            name=wb.name or name, tags=list(wb.tags), config=config, id=self.wandb_id,
            resume="allow" if wandb_id else None))

    def _wandb(self, what: str, *args) -> None:
        """A W&B failure mid-run loses W&B's copy, never the training or the local files."""
        if self.wandb is not None:
            self.wandb.call(what, *args)

    def log(self, row: dict) -> None:
        """One row: step, train/loss, val/loss (when evaluated), lr, elapsed, and anything else for W&B."""
        self._csv.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        self._file.flush()
        self._wandb("log", {k: v for k, v in row.items() if k != "step" and v is not None}, row["step"])

    def write_summary(self, summary: dict) -> None:
        save_summary(self.out_dir, summary)
        self._wandb("summary", {k: v for k, v in summary.items()
                                if isinstance(v, (int, float, str, bool)) and k != "command"})

    def write_samples(self, labelled: list[tuple[str, str]]) -> None:
        with open(self.out_dir / "samples.tsv", "w") as f:
            f.write("word\tlabel\n")
            f.writelines(f"{w}\t{lab}\n" for w, lab in labelled)
        self._wandb("table", "samples", ["word", "label"], [list(x) for x in labelled])

    def log_images(self, images: dict[str, Path]) -> None:
        self._wandb("images", {key: str(path) for key, path in images.items()})

    def close(self, failed: bool = False) -> None:
        """Close metrics.csv and finish the W&B run (waits until its record is written)."""
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish(1 if failed else 0, str(self.out_dir / "train.log"))
            self.wandb = None


def new_run_id() -> str:
    """A W&B run id (8 characters of [a-z0-9], as W&B's own), chosen here so that the training state
    can record it before W&B has started."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def save_summary(out_dir: Path, summary: dict) -> None:
    """summary.json, written whole or not at all (temporary file, then rename)."""
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out_dir / "summary.json")


def provenance() -> dict:
    """What is needed to repeat the run: versions, the code's git commit, the command line."""
    import torch  # here: this module stays light for the processes that only write records (sweep callbacks)
    return {
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), **_git_state(), "command": " ".join(sys.argv),
        # the CPU and the code paths it ran (nplm/repro.py): what a run's last digits depend on
        "cpu": repro.cpu(), "pins": repro.in_effect(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def rss_mb() -> float | None:
    """The resident memory of this process now, in MB (None where /proc is not there)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The most resident memory this process has used so far, in MB (in a sweep: all jobs so far)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _git_state() -> dict:
    repo = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=5)
        commit = proc.stdout.strip() if proc.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def _rows_up_to(path: Path, step: int) -> list[dict]:
    """The rows of a metrics.csv with step <= `step` (an absent or unreadable file: none)."""
    try:
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= step]
    except OSError:
        return []


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)  # full precision: the determinism test compares these exactly
    return v
