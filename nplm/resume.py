"""Interruption and resume: stop cleanly on SIGINT/SIGTERM, and continue a run where it stopped.

- While training, a checkpoint of the whole training state (`last.pt`: weights, optimiser, moving
  average, RNG states, best-so-far, step; nplm/checkpoint.py) is written atomically at every
  evaluation and when a signal asks the run to stop. A signal lets the current step finish, saves,
  and ends the run with status `interrupted`; a second Ctrl-C stops at once. In a SLURM job run by
  submitit, its time-limit signal (USR2) does the same, then submitit requeues the job.
- `python train.py resume=<run folder>` continues that run in its own folder with its own saved
  config. Only RESUMABLE settings may be given with it (train.steps or train.epochs, to train longer, and settings
  that change no loss); anything else is refused. Without train.steps, the resumed run ends with
  exactly the losses of an uninterrupted one.
- One process at a time trains in a folder (`claim`): two runs started in the same second, or a
  resume while the run still goes on, get an error instead of writing over each other.
- A folder that holds a finished run of the same config is not trained again (a re-run sweep skips
  its finished jobs); a finished run of another config is never written over. A folder that holds
  the saved state of the same config resumes by itself, so a sweep's own command (with
  hydra.sweep.dir=...) picks up where it stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from nplm.checkpoint import STATE_NAME, TrainState
from nplm.config import Config, ConfigError, from_dict, given_keys, upgrade, validate
from nplm.preflight import with_epochs

# Settings a resumed run may change: how long it trains (the schedule follows the new length), how it
# reports, how many threads it uses.
RESUMABLE = ("train.steps", "train.epochs", "train.threads", "train.log_interval", "train.num_samples", "train.fast", "wandb.mode")


class Interrupted(BaseException):
    """A signal stopped the run (after saving its state when it came during training). A
    BaseException, like KeyboardInterrupt, so that it ends a whole sweep, not just one job."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}"
                         + (f" at step {step}" if step is not None else ""))
        self.signum, self.step = signum, step


class StopSignals:
    """While active: SIGINT and SIGTERM raise Interrupted at once, except inside `deferred()` (the
    training loop), where the first one only sets `signum` so the loop can save and stop between
    steps; a second SIGINT there stops at once. Outside the main thread it does nothing.

    A job that submitit runs (a SLURM sweep, +launcher=slurm) also gets submitit's signal (SIGUSR2,
    or $SUBMITIT_PREEMPT_SIGNAL), sent `signal_delay_s` before the job's time limit: submitit's own
    handler for it requeues the job and exits. Here that signal too lets the step finish and saves the
    state (Interrupted); then submitit's handler gets it, when the run has stopped, so the requeued job
    resumes from the saved state. Outside the training loop it goes to submitit's handler at once."""

    def __init__(self):
        self.signum: int | None = None
        self._defer = False
        self._old: dict = {}
        self._pass_on: dict = {}  # signal -> the handler it goes to once the state is saved (submitit's)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
            if usr is not None and callable(signal.getsignal(usr)):  # a handler of submitit's
                self._pass_on[usr] = signal.getsignal(usr)
            for s in (signal.SIGINT, signal.SIGTERM, *self._pass_on):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        if isinstance(exc, Interrupted) and exc.signum in self._pass_on:
            # the state is saved: now submitit requeues the job and exits (or, after max_num_timeout
            # requeues, raises UncompletedJobError; a re-run of the sweep's command resumes it then)
            self._pass_on[exc.signum](exc.signum, None)

    def _handle(self, signum: int, frame) -> None:
        if self._defer and self.signum is None:
            self.signum = signum
            return
        if signum in self._pass_on:
            self._pass_on[signum](signum, frame)  # nothing to save yet (or any more): submitit requeues
            return
        raise Interrupted(signum)

    def defer(self, on: bool) -> None:
        self._defer = on


def finished_val_loss(run_dir: Path, cfg: Config) -> float | None:
    """The final val loss of a finished run of this same config in run_dir (to skip it), else None.

    Raises ConfigError when run_dir holds a finished run of another config: it is never overwritten.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record of an unfinished run: run it again
    if summary.get("status") != "finished" or summary.get("mode", "train") != "train":
        return None  # unfinished, or a tool's run (lr_find, overfit_batch): cheap to run again
    if upgrade(summary.get("config") or {}) != dataclasses.asdict(cfg):
        raise ConfigError(f"{run_dir} holds a finished run of a different config; it is never overwritten. "
                          "Start a new sweep folder with hydra.sweep.dir=... (or hydra.run.dir=...)")
    return summary["val_loss"] if "val_loss" in summary else summary["dev_loss"]  # dev_loss: its name before


def continue_from(run_dir: Path, cfg: Config, overrides: list[str]) -> tuple[Config, TrainState | None]:
    """The config to train with in run_dir and the saved training state to start from (None: start
    afresh). `resume=` given: the folder's saved config, changed only by RESUMABLE overrides. Not
    given, but the folder holds the saved state of the same config (a job of a re-run sweep): that.
    The saved state of a different config is never written over."""
    if cfg.resume:
        state = TrainState.load(run_dir)
        cfg = with_epochs(validate(resume_config(from_dict(state.config), cfg, overrides)))
    elif (run_dir / STATE_NAME).is_file():
        state = TrainState.load(run_dir)
        if state.config != dataclasses.asdict(cfg):
            raise ConfigError(f"{run_dir} holds an interrupted run of a different config; resume it with "
                              f"python train.py resume={run_dir}, or choose another folder with hydra.run.dir=...")
    else:
        return cfg, None
    if cfg.train.steps < state.step:
        raise ConfigError(f"train.steps={cfg.train.steps} is below the step the run stopped at ({state.step}); "
                          "leave train.steps out or raise it")
    return cfg, state


def resume_config(saved: Config, given: Config, overrides: list[str]) -> Config:
    """The config a resumed run continues with: its saved one, with the command line's overrides of
    RESUMABLE keys (values taken from `given`, the composed config); any other override is refused."""
    keys = given_keys(overrides)
    refused = [k for k in keys if k != "resume" and k not in RESUMABLE]
    if refused:
        raise ConfigError(f"resume=... continues a run with its own saved config, so {', '.join(refused)} cannot "
                          f"be changed (allowed with resume: {', '.join(RESUMABLE)}); start a new run instead")
    for key in keys:
        if key in RESUMABLE:
            section, name = key.split(".")
            setattr(getattr(saved, section), name, getattr(getattr(given, section), name))
    if "train.steps" in keys and "train.epochs" not in keys:
        saved.train.epochs = 0.0  # the steps given now set the length, not the saved epochs
    saved.resume = None
    return saved


def check_resumable(folder: Path) -> None:
    """That `folder` holds an interrupted run with a readable saved state, or a clear error."""
    if not folder.is_dir():
        raise ConfigError(f"resume={folder}: no such run folder; give the folder of an interrupted run "
                          "(under outputs/runs/)")
    if (folder / "summary.json").is_file() and not (folder / STATE_NAME).is_file():
        try:
            status = json.loads((folder / "summary.json").read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status == "finished":
            raise ConfigError(f"the run in {folder} finished already; there is nothing to resume "
                              "(start a new run to train more)")
    TrainState.load(folder)


def resume_dir(argv: list[str]) -> Path | None:
    """The folder of `resume=<folder>` on the command line, if given."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    return Path(values[-1]).expanduser() if values and values[-1] not in ("", "null") else None


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on run_dir (released when the process ends, however it ends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as f:  # "a": claiming changes nothing in the folder
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another process is training in {run_dir} right now; wait for it to end, or "
                              "choose another folder with hydra.run.dir=...") from None
        yield
