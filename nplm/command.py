"""The `python train.py` command around Hydra: --help, `resume=<folder>`, one run or one sweep job, and
how the command ends. Every exit code is decided here:

    0    the run (or every job of the sweep) finished
    1    the run diverged, or a job of the sweep failed (its record says why; the report lists it)
    2    refused: a bad config, data or folder (one line says what to change; nothing is left behind)
    128+N  stopped by signal N (SIGINT: 130, SIGTERM: 143) after saving what can be resumed
"""
from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.nplm_launcher import register as register_launcher  # nplm/sweep/launcher

from nplm.checkpoint import STATE_NAME
from nplm.cli import USER_ERRORS, config_error_line, fail
from nplm.config import command_line_wins, register_schema, to_config
from nplm.preflight import with_epochs
from nplm.resume import Interrupted, check_resumable, claim, continue_from, finished_val_loss, resume_dir
from nplm.sweep import folders, vector
from nplm.train import run

log = logging.getLogger("nplm")
CONF = Path(__file__).resolve().parent.parent / "conf"
_run_dir: Path | None = None  # the folder of the run in progress, for the message if it is interrupted


def job(cfg: DictConfig) -> float:
    """One run, or one job of a sweep, in the folder Hydra made for it; returns its final val loss
    (what sweepers minimise: inf, never NaN, for a run that diverged). A finished run of the same
    config in that folder is not run again; an interrupted one goes on (nplm/resume.py)."""
    global _run_dir
    hc = HydraConfig.get()
    out_dir = _run_dir = Path(hc.runtime.output_dir)
    multirun, overrides = hc.mode == RunMode.MULTIRUN, list(hc.overrides.task)
    try:
        with claim(out_dir):
            for note in command_line_wins(cfg, overrides):
                log.info("%s", note)
            config = with_epochs(to_config(cfg))
            done = None if config.resume else finished_val_loss(out_dir, config)
            if done is not None:
                log.info("skipping %s: it finished already in %s (val loss %.4f)",
                         f"job {hc.job.num}" if multirun else "the run", out_dir, done)
                return done
            config, state = continue_from(out_dir, config, overrides)
            if not multirun:
                loss = run(config, out_dir, resume=state)
                if not math.isfinite(loss):
                    raise SystemExit(1)  # diverged: the message is logged, the record is in the run folder
                return loss
            name = folders.job_name(hc.sweep.dir, overrides, hc.job.num)
            loss = run(config, out_dir, group=hc.sweep.dir, name=name, resume=state,
                       grouped=vector.take(out_dir, config))
            return loss if math.isfinite(loss) else math.inf
    except Interrupted as e:  # a sweep job's train.log says so too (on a cluster, nothing else would)
        if multirun:
            log.error("%s; %s", str(e) or "interrupted", "its state is saved" if (out_dir / STATE_NAME).is_file()
                      else "nothing to resume: it stopped before training began")
        raise
    except USER_ERRORS as e:
        if multirun:  # the report lists it (the sweep folder goes if every job is refused)
            log.error("error: %s", e)  # in the job's train.log
            folders.record_refusal(out_dir, e, overrides)
            raise  # Hydra records the failed job and goes on with the others
        if folders.is_new_folder(out_dir):  # a refused command leaves nothing behind
            folders.remove_new(out_dir)
            fail(str(e))
        log.error("error: %s", e)  # in a folder that was there before (resume=): its train.log keeps it
        raise SystemExit(2) from None


def main(hydra_main: Callable[[], None]) -> None:
    """Run the command (`hydra_main`: train.py's @hydra.main function) and end the process with its
    exit code. HYDRA_FULL_ERROR=1 is the debug flag: errors then show their whole traceback."""
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # so that errors reach this function as exceptions
    try:
        if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
            print_help(sys.argv[1:])
        register_schema()
        register_launcher()
        redirect_resume()
        hydra_main()
    except (Interrupted, KeyboardInterrupt) as e:  # the run saved its state (if training began) and its record
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        if folders.sweep_started():
            again = f"run the same command with hydra.sweep.dir={folders.sweep_folder()}"
            hint = f"to go on, {again}"
            if (folders.sweep_folder() / ".submitit").is_dir():  # a cluster's jobs do not stop with this command
                hint = (f"its SLURM jobs go on running (squeue): let them end, or scancel them; then {again} to "
                        "resume the interrupted ones, run the rest and write the report")
        elif _run_dir is not None and (_run_dir / STATE_NAME).is_file():
            hint = f"its state is saved; to go on: python train.py resume={_run_dir}"
        elif _run_dir is not None and _logged_rows(_run_dir):  # a second Ctrl-C stopped the save
            hint = "nothing to resume: it stopped before its state was saved; run the command again to start afresh"
        else:
            hint = "nothing to resume: it stopped before training began"
        fail(f"{str(e) or 'interrupted'}; {hint}", code=128 + signum)
    except (HydraException, OmegaConfBaseException) as e:
        if debug:
            raise
        folders.remove_if_refused()
        fail(config_error_line(e))
    except Exception as e:
        if debug or not folders.sweep_started():
            raise  # a bug, not bad input: the traceback is what a report needs
        refusal = folders.remove_if_refused()
        if refusal:  # every job refused the same way: bad input, and the sweep leaves nothing behind
            fail(f"every job of the sweep was refused: {refusal}")
        first = str(e).splitlines()[0] if str(e) else ""
        sweep = folders.sweep_folder()
        if sweep is None or not sweep.is_dir() or not any(p.is_dir() and p.name.isdigit() for p in sweep.iterdir()):
            fail(f"the sweep failed before any job ran ({type(e).__name__}: {first})", code=1)
        # a multirun: every job ran; the failed ones are recorded in their folders and the report
        fail(f"a job of the sweep failed ({type(e).__name__}: {first}); "
             "the leaderboard lists every job with its status and error", code=1)
    finally:
        folders.write_report_if_sweep()
        # the interpreter's last garbage collection walks every object torch made at import: ~0.45 s
        # at each exit for nothing (files are closed, atexit handlers such as logging's still run)
        gc.freeze()


def _logged_rows(run_dir: Path) -> bool:
    """Whether the run in run_dir logged a metrics row (it trained), beyond metrics.csv's header."""
    try:
        with open(run_dir / "metrics.csv") as f:
            return len(f.readlines()) > 1
    except OSError:
        return False


def redirect_resume() -> None:
    """`resume=<folder>`: check the folder before Hydra makes anything, then run in it."""
    folder = resume_dir(sys.argv[1:])
    if folder is not None:
        if "-m" in sys.argv or "--multirun" in sys.argv:
            fail("resume= continues one run; to resume a sweep, run its command again with "
                 "hydra.sweep.dir=<its folder>")
        try:
            check_resumable(folder)
        except USER_ERRORS as e:
            fail(str(e))
        sys.argv.append(f"hydra.run.dir={folder}")


def print_help(argv: list[str]) -> None:
    """--help / -h: the page nplm/help.py generates, with the defaults the other arguments give."""
    from hydra import compose, initialize_config_dir

    from nplm.help import help_text
    register_schema()
    overrides = [a for a in argv if a not in ("-h", "--help", "-m", "--multirun") and not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=overrides)
            command_line_wins(cfg, overrides)
            cfg = to_config(cfg)
        except USER_ERRORS as e:
            fail(f"{e} (the other arguments given with --help must make a valid config)")
    print(help_text(cfg), end="")
    sys.exit(0)
