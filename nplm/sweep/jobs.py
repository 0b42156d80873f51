"""The jobs of one or more sweeps (or single runs) as a pandas DataFrame, and what a report says of
them: what they vary, the leaderboard, the Kneser-Ney baseline on their split, where a running
sweep stands. Read by the report's writers (nplm/sweep/report.py, pngs.py, dashboard.py).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd

from nplm.config import upgrade

# summary keys of records written before the held-out split was called val
OLD_NAMES = {"dev_loss": "val_loss", "best_dev_loss": "best_val_loss", "best_dev_step": "best_val_step",
             "dev_ppl": "val_ppl", "best_dev_ppl": "best_val_ppl"}
RESULT_COLUMNS = ["val_loss", "best_val_loss", "train_loss", "gap", "num_params", "wall_time_s", "status"]
# config keys that do not change what a run learns: shown where they differ, never plotted as hyperparameters
NOT_HYPERPARAMETERS = ("train.log_interval", "train.eval_interval", "train.eval_chunk", "train.threads",
                       "train.num_samples", "train.fast", "resume", "wandb.", "lr_find.", "overfit_batch.")
CONF = Path(__file__).resolve().parents[2] / "conf"  # the configs train.py composes
BASELINE_FILE = "baseline.json"  # the Kneser-Ney baseline, kept beside the report (it takes seconds to fit)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: its subfolders with a Hydra record or a summary."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and is_run(p)]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def is_run(folder: Path) -> bool:
    """Whether `folder` is one run's (a single run or a sweep's job), not a sweep's."""
    return (folder / ".hydra").is_dir() or (folder / "summary.json").is_file()


def sweep_state(sweep_dir: Path) -> dict:
    """What the sweep recorded about itself (nplm/sweep/folders.py): swept keys, command, and while
    it runs `started` and `jobs` (how many it will launch); `ended` once it ended. {} if none."""
    try:
        return json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def is_live(state: dict) -> bool:
    """Whether the sweep is running: it started (a sweep of this version) and has not ended."""
    return "started" in state and "ended" not in state


def read_summary(job: Path, live: bool, started: float | None = None) -> dict:
    """A job's summary.json; without one, a running job (live sweep) or an unreadable one. In a live
    sweep that started at `started`, a job interrupted before then whose log has moved since is
    running again (resuming)."""
    try:
        summary = {OLD_NAMES.get(k, k): v for k, v in json.loads((job / "summary.json").read_text()).items()}
    except FileNotFoundError:
        if live:
            return {"status": "running", "error": ""}
        return {"status": "unreadable", "error": "no summary.json: still running elsewhere (a cluster's job), or "
                "killed before it recorded its result; re-run the sweep's command to run or resume it"}
    except (OSError, ValueError) as e:
        return {"status": "unreadable", "error": f"summary.json cannot be read ({type(e).__name__}: {e})"}
    if live and started and summary.get("status") == "interrupted" \
            and _mtime(job / "summary.json") < started < _mtime(job / "train.log"):
        return {**summary, "status": "running", "error": ""}
    return summary


def load_jobs(folders: list[Path]) -> pd.DataFrame:
    """One row per job: where it is, its status and error, its results, and its config flattened
    to dotted columns (model.n_embd, optim.lr, ...). `folders` are sweeps or single runs. A tool's
    run (mode=lr_find, overfit_batch) has no val loss to rank: it is left out, and counted in
    df.attrs["tool_runs"]."""
    rows, tools = [], 0
    for folder in folders:
        runs = [(_label(folder.parent), folder)] if is_run(folder) else [(_label(folder), j) for j in job_dirs(folder)]
        state = sweep_state(folder)
        live = is_live(state)
        for sweep, job in runs:
            summary = read_summary(job, live, state.get("started"))
            if summary.get("mode", "train") != "train":
                tools += 1
                continue
            row = {"sweep": sweep, "job": job.name, "path": str(job), "status": summary.get("status"),
                   "error": summary.get("error", "")}
            for key in ("val_loss", "best_val_loss", "train_loss", "val_ppl", "train_ppl", "num_params",
                        "wall_time_s", "steps_per_s"):
                row[key] = summary.get(key, math.nan)
            config = upgrade(summary.get("config") or _config_from_hydra(job))
            if config:
                row.update(flatten(config))
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["tool_runs"] = tools
    if df.empty:
        return df
    if df["sweep"].nunique() < len(folders):  # runs of several folders with one name: tell them apart
        df["sweep"] = [str(Path(p).parent) for p in df["path"]]
    for key in ("val_loss", "best_val_loss", "train_loss", "wall_time_s"):
        df[key] = pd.to_numeric(df[key], errors="coerce")  # a failed job's None is a missing number
    df["gap"] = df["val_loss"] - df["train_loss"]  # overfitting shows as a growing gap
    df["num_params"] = df["num_params"].astype("Int64")  # failed jobs have none
    return df


def flatten(config: dict, prefix: str = "") -> dict:
    """{'model': {'n_embd': 10}} -> {'model.n_embd': 10} (lists stay values)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _label(folder: Path) -> str:
    """A sweep's name in a comparison: its folder's, with its parent's where the folder is a date
    (a named sweep's outputs/sweeps/<name>/<date_time>)."""
    return f"{folder.parent.name}/{folder.name}" if folder.name[:1].isdigit() and folder.parent.name else folder.name


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


def differing_columns(df: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between jobs."""
    config_cols = [c for c in df.columns if "." in c or c in ("seed", "device", "reproducible", "mode")]
    return [c for c in config_cols if df[c].astype(str).nunique(dropna=False) > 1]


def is_hyperparameter(col: str) -> bool:
    return not any(col == k or (k.endswith(".") and col.startswith(k)) for k in NOT_HYPERPARAMETERS)


def swept_columns(df: pd.DataFrame, order: list[str] | None = None) -> list[str]:
    """The hyperparameters the jobs explore: config keys that differ between jobs and change what a
    run learns (not train.log_interval, wandb.*, ...); those in `order` (the sweep's own list of
    what it sweeps) first, in its order; else in the config's order, the seed last."""
    found = sorted((c for c in differing_columns(df) if is_hyperparameter(c)), key=lambda c: c == "seed")
    first = [c for c in order or [] if c in found]
    return first + [c for c in found if c not in first]


def word_level(df: pd.DataFrame) -> bool:
    """Whether the jobs model words (data.level=word): perplexity is their figure, 2.17 is not their bar."""
    return "data.level" in df.columns and (df["data.level"] == "word").any()


def leaderboard(df: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """The jobs sorted by val loss (failed and unfinished last), with what differs between them, and
    last, where each is (path)."""
    results = RESULT_COLUMNS[:1] + ["val_ppl"] + RESULT_COLUMNS[1:] if word_level(df) else RESULT_COLUMNS
    others = [c for c in differing_columns(df) if c not in swept]  # differ, but are not hyperparameters
    cols = (["sweep"] if df["sweep"].nunique() > 1 else []) + ["job"] + swept + others + results + ["error", "path"]
    board = df.sort_values("val_loss", na_position="last", kind="stable")[cols].reset_index(drop=True)
    board.index = board.index + 1
    board.index.name = "rank"
    return board


def count_baseline(df: pd.DataFrame, cache_dir: Path | None = None) -> tuple[str, float] | None:
    """The Kneser-Ney n-gram's val loss on the data and split the jobs used (if they all used one):
    the bar a neural model has to clear to be worth its training (docs/reference.md). Order 6 for
    characters, 5 for words. Kept in `cache_dir`/baseline.json,
    keyed by the data config, so that a live dashboard fits it once per sweep."""
    keys = [c for c in df.columns if c.startswith("data.")]
    if not keys or len(df[keys].astype(str).drop_duplicates()) != 1:
        return None
    given = {k.split(".", 1)[1]: None if pd.isna(v) else getattr(v, "item", lambda: v)()  # numpy -> Python
             for k, v in df[keys].iloc[0].items()}
    cache = Path(cache_dir) / BASELINE_FILE if cache_dir else None
    try:
        saved = json.loads(cache.read_text()) if cache else {}
        if saved.get("data") == given:
            return saved["name"], saved["val_loss"]
    except (OSError, ValueError, KeyError):
        pass
    result = _fit_baseline(given)
    if result and cache:
        write_atomic(cache, json.dumps({"data": given, "name": result[0], "val_loss": result[1]}, indent=2))
    return result


def _fit_baseline(given: dict) -> tuple[str, float] | None:
    from nplm.config import DataConfig
    from nplm.data import load_data
    from nplm.ngram import NGram
    fields = DataConfig.__dataclass_fields__
    given = {k: v for k, v in given.items() if k in fields}
    d = DataConfig(**{name: f.default for name, f in fields.items() if name not in given}, **given)
    order = 6 if d.level == "char" else 5
    try:
        data = load_data(d, order - 1)
    except (ValueError, TypeError):  # the data moved or changed since the sweep: no baseline, the rest stands
        return None
    model = NGram(order, data.vocab.size, data.X["train"].shape[1]).fit(data.X["train"], data.Y["train"])
    return f"Kneser-Ney {order}-gram", -model.log_prob(data.X["val"], data.Y["val"]).mean().item()


def progress(folders: list[Path], df: pd.DataFrame) -> dict:
    """Where a sweep stands: counts by status, jobs not started yet, time left (from the pace of the
    jobs that ended since it started), whether it is live. One sweep only; {} otherwise."""
    if len(folders) != 1 or is_run(folders[0]):
        return {}
    state = sweep_state(folders[0])
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    planned = state.get("jobs")
    tools = df.attrs.get("tool_runs", 0)
    waiting = max(0, planned - len(df) - tools) if isinstance(planned, int) else 0
    out = {"live": is_live(state), "counts": counts, "waiting": waiting, "planned": planned, "tool_runs": tools,
           "started": state.get("started"), "ended": state.get("ended"), "command": state.get("command"),
           "swept": state.get("swept")}
    if out["live"] and state.get("started"):
        running = counts.get("running", 0)
        ended_since = sum(1 for p in (df["path"] if not df.empty else [])
                          if _mtime(Path(p) / "summary.json") >= state["started"])
        left = waiting + running
        elapsed = time.time() - state["started"]
        out["time_left_s"] = elapsed / ended_since * left if ended_since and left else (0.0 if not left else None)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -math.inf


def write_atomic(path: Path, text: str | list[str]) -> None:
    """Write a whole file or leave the old one: jobs of a sweep may rewrite the report at once. A list
    is written part by part (a dashboard's parts are megabytes: never joined into one string)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for part in [text] if isinstance(text, str) else text:
            f.write(part)
    os.replace(tmp, path)



def rerun_command(job: Path, conf_dir: Path = CONF) -> str | None:
    """The `python train.py ...` command that trains this job again as a single run: its overrides
    (.hydra/overrides.yaml) without the sweep's machinery (hydra.*, +launcher=), a named sweep
    (+sweep=NAME) replaced by the config groups it selects (conf/sweep/NAME.yaml's defaults), and
    `resume=` left out. None if the job has no Hydra record."""
    import shlex

    from omegaconf import OmegaConf
    try:
        overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
    except (OSError, ValueError):
        return None
    args = []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.startswith("hydra") or key in ("launcher", "resume"):
            continue
        if key == "sweep":
            args += _groups_selected(conf_dir / "sweep" / f"{value}.yaml")
            continue
        args.append(o)
    return " ".join(["python", "train.py", *map(shlex.quote, args)])


def _groups_selected(sweep_yaml: Path) -> list[str]:
    """`group=option` for each config group a named sweep's defaults list overrides (not Hydra's)."""
    from omegaconf import OmegaConf
    try:
        defaults = OmegaConf.to_container(OmegaConf.load(sweep_yaml)).get("defaults", [])
    except (OSError, ValueError):
        return []
    selected = []
    for entry in defaults:
        for key, value in (entry.items() if isinstance(entry, dict) else []):
            group = key.removeprefix("override").strip().lstrip("/")
            if not group.startswith("hydra"):
                selected.append(f"{group}={value}")
    return selected
