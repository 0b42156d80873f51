"""Sweep folders: what a sweep varies, its jobs' labels, refusals, and the end-of-sweep report.

- Resume: the same command with `hydra.sweep.dir=<the interrupted sweep's folder>` (printed when a
  sweep starts) runs only the jobs that have not finished: nplm/resume.py skips a job whose folder
  holds a finished run of the same config and resumes one that holds its saved state.
- The dashboard is live: written when the sweep starts and rewritten as each job starts and ends
  (in the job's process, whichever launcher runs it), from what the job folders hold and what
  sweep.json says (when the sweep started, how many jobs it launches). The full report (PNGs too)
  is written when the sweep ends, also when some jobs failed: Hydra skips its `on_multirun_end`
  callback then, so nplm/command.py calls `write_report_if_sweep()` on its way out; sweep.json then
  records that the sweep ended, and the dashboard stops reloading itself.
- A refused command leaves nothing: a single run's new folder is removed when its config or data is
  refused, and a new sweep folder when every job was refused (or none started).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from nplm.sweep import cluster
from nplm.tracking import save_summary

log = logging.getLogger("nplm")
_sweep_dir: Path | None = None  # set in the launching process when a multirun starts
_new_dirs: dict[Path, Path] = {}  # the run or sweep folders this process made -> the highest of their
# parents that did not exist either (outputs/ on a first run), which a refusal removes too when empty


def swept_keys(task_overrides: list[str], sweeper_params: dict | None) -> list[str]:
    """The keys a sweep varies: sweep-syntax overrides (a=1,2 / range(...) / choice(...)) and the
    sweeper's `params` (a named sweep's grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + [k for k in (sweeper_params or {}) if k not in keys]


def job_name(sweep_dir: str, task_overrides: list[str], num: int) -> str:
    """A job's label for W&B: its values of the swept keys (model.n_embd=10,optim.lr=0.03)."""
    try:
        swept = json.loads((Path(sweep_dir) / "sweep.json").read_text())["swept"]
    except (OSError, ValueError, KeyError):
        return f"job{num}"
    values = dict(o.lstrip("+~").split("=", 1) for o in task_overrides if "=" in o)
    return ",".join(f"{k}={values[k]}" for k in swept if k in values) or f"job{num}"


class SweepCallback(Callback):
    """In the launching process: records what the sweep varies (sweep.json, read by every job,
    whatever launcher runs it) and remembers the folder for the report at the end; for a single run
    or a sweep, whether its folder is new (so that a refused command can remove it)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.run.dir)  # ${now:...} resolves once: the folder Hydra makes next
        _note_if_new(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        cluster.quiet_sacct()  # +launcher=slurm on a cluster without accounting: one warning, not one a poll
        _sweep_dir = Path(config.hydra.sweep.dir)
        _note_if_new(_sweep_dir)
        _sweep_dir.mkdir(parents=True, exist_ok=True)
        params = config.hydra.sweeper.get("params")
        swept = swept_keys(list(config.hydra.overrides.task), dict(params) if params else None)
        try:
            batches = grid(config)
        except Exception:  # noqa: BLE001 - a sweep Hydra cannot parse: its sweeper reports it next
            batches, refused = None, True
        else:
            refused = not jobs_compose(config, batches)  # a value of the wrong type: the sweeper refuses it next
        state = {"swept": swept, "command": sys.argv, "started": time.time(),
                 "jobs": planned_jobs(config, batches)}
        (_sweep_dir / "sweep.json").write_text(json.dumps(state, indent=2) + "\n")
        _write_live(_sweep_dir)
        if refused:  # the sweeper reports it next, and the folder goes: no "resume with" for it
            return
        resume = " ".join(a for a in sys.argv if not a.startswith("hydra.sweep.dir="))
        log.info("sweep folder: %s (if interrupted, resume with: python %s hydra.sweep.dir=%s)",
                 _sweep_dir, resume, _sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            _write_live(Path(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            _write_live(Path(config.hydra.sweep.dir))


def planned_jobs(config: DictConfig, batches) -> int | None:
    """How many jobs the sweep launches: Optuna's trials, or the basic sweeper's grid (`batches`, from
    `grid`); None for other sweepers, or a grid that could not be parsed."""
    if "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower():
        return int(config.hydra.sweeper.n_trials)
    return sum(len(batch) for batch in batches) if batches else None


def grid(config: DictConfig) -> list[list[list[str]]] | None:
    """The basic sweeper's batches of jobs' overrides (its params and the command's sweep overrides,
    combined as it combines them), as it will launch them; None for other sweepers."""
    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return BasicSweeper.split_arguments(overrides, sweeper.get("max_batch_size"))


def jobs_compose(config: DictConfig, batches: list[list[list[str]]] | None) -> bool:
    """Whether every swept value composes into a job's config (False: a value of the wrong type, which
    the sweeper then refuses); True for other sweepers (`batches` None), which check their own.

    A whole composition reads every config file again (about 0.15 s), so one is made per set of config
    group choices (and `+`/`~` overrides); the other jobs' values are applied to that job's config as
    Hydra applies them (checked against the schema), each value once. A value refused only in
    combination with another is left to the sweeper, which composes every job before launching it."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    loader, parser = GlobalHydra.instance().config_loader(), OverridesParser.create()
    groups = set(config.hydra.runtime.choices)  # the config groups (model, data, hydra/launcher, ...)

    def changes_more(o) -> bool:  # a group's choice (model=ngram), or an added or removed key
        return (o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None
                or o.key_or_group in groups)

    composed: dict[tuple[str, ...], DictConfig] = {}  # those overrides -> a job's config
    tried: set[str] = set()
    try:
        for batch in batches or []:
            for overrides in batch:
                if tried.issuperset(overrides):
                    continue
                parsed = parser.parse_overrides(list(overrides))
                choices = tuple(o.input_line for o in parsed if changes_more(o))
                if choices in composed:
                    values = [o for o in parsed if o.input_line not in tried]  # choices: tried when composed
                    ConfigLoaderImpl._apply_overrides_to_config(values, composed[choices])
                else:
                    composed[choices] = loader.load_sweep_config(config, list(overrides))
                    groups.update(composed[choices].hydra.runtime.choices)
                tried.update(overrides)
    except Exception:  # noqa: BLE001 - the sweeper raises the same error, which the command reports
        return False
    return True


def _write_live(sweep_dir: Path) -> None:
    from nplm.sweep.report import write_live  # pandas and plotly: imported only where a sweep needs them
    write_live(sweep_dir)


def _mark_ended(sweep_dir: Path) -> None:
    """sweep.json says the sweep ended: its dashboard stops reloading, and no job rewrites it."""
    path = sweep_dir / "sweep.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    state["ended"] = time.time()
    from nplm.sweep.jobs import write_atomic  # whole or not at all: jobs read it
    write_atomic(path, json.dumps(state, indent=2) + "\n")


def record_refusal(run_dir: Path, error: Exception, overrides: list[str]) -> None:
    """A sweep job refused before it trained (bad config or data): its folder says so, for the report
    (and for remove_if_refused). A folder holding another run's record is left alone."""
    if not (run_dir / "summary.json").exists() and not (run_dir / "config.yaml").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_summary(run_dir, {"status": "failed", "refused": True, "error": f"{type(error).__name__}: {error}",
                               "overrides": overrides})


def _note_if_new(folder: Path) -> None:
    folder = folder.resolve()
    if not folder.exists():
        top = folder
        while not top.parent.exists():
            top = top.parent
        _new_dirs[folder] = top


def is_new_folder(folder: Path) -> bool:
    """Whether this process made `folder` (a single run's), so a refusal may remove it."""
    return Path(folder).resolve() in _new_dirs


def remove_new(folder: Path) -> None:
    """Remove a folder this process made, and those of its parents it made that are now empty (a
    first refused run leaves no empty outputs/runs/); a parent another run has written to stays."""
    folder = Path(folder).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    top, parent = _new_dirs.get(folder, folder), folder.parent
    while parent.is_relative_to(top):
        try:
            parent.rmdir()
        except OSError:  # not empty, or gone
            break
        parent = parent.parent


def remove_if_refused() -> str | None:
    """After a multirun that made its sweep folder: if no job started, or every job was refused
    (bad config or data, nothing trained), remove the folder and return the refusals' messages
    ('' if no job started); else None (the sweep has a report to write)."""
    if _sweep_dir is None or not is_new_folder(_sweep_dir) or not _sweep_dir.is_dir():
        return None
    from nplm.sweep.jobs import job_dirs  # pandas: imported only where a sweep needs it
    errors = []
    for job in job_dirs(_sweep_dir):
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if not summary.get("refused"):
            return None
        errors.append(summary["error"].split(": ", 1)[-1])
    remove_new(_sweep_dir)
    return "; ".join(dict.fromkeys(errors))


def sweep_started() -> bool:
    """Whether this process launched a multirun (its jobs have folders and a report)."""
    return _sweep_dir is not None


def sweep_folder() -> Path | None:
    """The folder of the multirun this process launched, if any."""
    return _sweep_dir


def write_report_if_sweep() -> None:
    """After a multirun (finished or not), summarise its folder; never raises."""
    if _sweep_dir is None or not _sweep_dir.is_dir():
        return
    try:
        from nplm.sweep.jobs import job_dirs, load_jobs
        from nplm.sweep.report import write_report
        _mark_ended(_sweep_dir)
        if not job_dirs(_sweep_dir):
            return  # no job started (a bad override stopped the sweep first): nothing to report
        out = write_report([_sweep_dir], _sweep_dir)
        jobs = load_jobs([_sweep_dir])
        status = jobs["status"].value_counts().to_dict() if not jobs.empty else {}
        if jobs.attrs.get("tool_runs"):
            status["tool run" + "s" * (jobs.attrs["tool_runs"] != 1)] = jobs.attrs["tool_runs"]
        total = sum(status.values())
        board = f"leaderboard: {out / 'leaderboard.md'}; " if (out / "leaderboard.md").is_file() else ""
        print(f"sweep of {total} job{'s' * (total != 1)} ({', '.join(f'{n} {s}' for s, n in status.items())}); "
              f"{board}dashboard: {out / 'dashboard.html'}")
    except Exception as e:  # the jobs' own records are safe; a report can be written later
        print(f"warning: could not write the sweep report ({type(e).__name__}: {e}); "
              f"run: python scripts/report.py {_sweep_dir}")
