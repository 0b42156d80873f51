"""Tracking: the run's record in its output folder (metrics.csv, summary.json, samples.tsv).

Every logged step is one row of metrics.csv, written and flushed as it happens, so a run that
stops early still leaves its curve behind.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

METRIC_COLUMNS = ("step", "train/loss", "val/loss", "lr", "elapsed")


class Tracker:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(out_dir / "metrics.csv", "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        self._csv.writeheader()

    def log(self, row: dict) -> None:
        """One row: step, train/loss, val/loss (empty when not evaluated), lr, elapsed seconds."""
        self._csv.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        self._file.flush()

    def write_summary(self, summary: dict) -> None:
        path = self.out_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")

    def write_samples(self, labelled: list[tuple[str, str]]) -> None:
        with open(self.out_dir / "samples.tsv", "w") as f:
            f.write("word\tlabel\n")
            f.writelines(f"{w}\t{lab}\n" for w, lab in labelled)

    def close(self) -> None:
        self._file.close()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)  # full precision: the determinism test compares these exactly
    return v
