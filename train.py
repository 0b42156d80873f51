"""Train one NPLM from the Hydra configs in conf/.

    python train.py                                   # the default recipe on the bundled names
    python train.py model.n_embd=24 optim.lr=0.05     # override anything
    python train.py -m model.n_embd=2,10,24           # a multirun sweep, one folder per job
    python train.py +sweep=grid                       # a named sweep from conf/sweep/
    python train.py experiment=lecture                # makemore part 2, exactly
    python train.py resume=outputs/runs/<run>         # continue an interrupted run in its folder
    python train.py --help                            # every key, its meaning, allowed values and default
"""

import gc
import logging
import math
import os
import shutil
import signal
import sys
from pathlib import Path

from nplm import plots, wandb_log

plots.start_worker()  # first: it imports matplotlib on another core while this process imports torch
wandb_log.start_worker(sys.argv[1:])  # and W&B's worker imports wandb and starts its service

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nplm.checkpoint import STATE_NAME
from nplm.cli import USER_ERRORS, config_error_line, fail
from nplm.config import register_schema, to_config
from nplm.resume import Interrupted, check_resumable, claim, continue_from, resume_dir
from nplm.sweep import (
    finished_dev_loss,
    is_new_folder,
    job_name,
    register_launcher,
    remove_if_refused,
    sweep_folder,
    sweep_started,
    write_report_if_sweep,
)
from nplm.tracking import save_summary
from nplm.train import run

log = logging.getLogger("nplm")
register_schema()
register_launcher()
_run_dir: Path | None = None  # the folder of the run in progress, for the message if it is interrupted


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    global _run_dir
    _run_dir = out_dir
    try:
        with claim(out_dir):
            config = to_config(cfg)
            if not config.resume:
                done = finished_dev_loss(out_dir, config)
                if done is not None:
                    log.info("skipping job %s: it finished already in %s (dev loss %.4f)", hc.job.num, out_dir, done)
                    return done
            config, state = continue_from(out_dir, config, list(hc.overrides.task))
            group, name = (hc.sweep.dir, job_name(hc.sweep.dir, list(hc.overrides.task), hc.job.num)) if multirun \
                else (None, None)
            dev_loss = run(config, out_dir, group=group, name=name, resume=state)
            if not math.isfinite(dev_loss):
                if not multirun:
                    sys.exit(1)  # diverged: the message is logged, the record is in the run folder
                return math.inf  # sweepers minimise it: never NaN
            return dev_loss
    except USER_ERRORS as e:
        if multirun:
            # the sweep's report lists the refused job (the whole sweep folder goes if every job is refused);
            # a folder holding another run's record is left alone
            if not (out_dir / "summary.json").exists() and not (out_dir / "config.yaml").exists():
                save_summary(out_dir, {"status": "failed", "refused": True, "error": f"{type(e).__name__}: {e}",
                                       "overrides": list(hc.overrides.task)})
            raise  # Hydra records the failed job and goes on with the others
        if is_new_folder(out_dir):  # a refused command leaves nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
            fail(str(e))
        log.error("error: %s", e)  # in a folder that was there before (resume=): its train.log keeps it
        sys.exit(2)


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
    overrides = [a for a in argv if a not in ("-h", "--help", "-m", "--multirun") and not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "conf"), version_base="1.3"):
        try:
            cfg = to_config(compose(config_name="config", overrides=overrides))
        except USER_ERRORS as e:
            fail(f"{e} (the other arguments given with --help must make a valid config)")
    print(help_text(cfg), end="")
    sys.exit(0)


if __name__ == "__main__":
    # Composition errors (unknown keys, wrong types, bad override syntax, a missing config) come
    # back here as exceptions and leave as one line and exit 2. HYDRA_FULL_ERROR=1 is the debug
    # flag: then Hydra's full traceback is shown instead.
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
            print_help(sys.argv[1:])
        redirect_resume()
        main()
    except (Interrupted, KeyboardInterrupt) as e:  # the run saved its state (if training began) and its record
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        if sweep_started():
            hint = f"to go on, run the same command with hydra.sweep.dir={sweep_folder()}"
        elif _run_dir is not None and (_run_dir / STATE_NAME).is_file():
            hint = f"its state is saved; to go on: python train.py resume={_run_dir}"
        else:
            hint = "nothing to resume: it stopped before training began"
        fail(f"{str(e) or 'interrupted'}; {hint}", code=128 + signum)
    except (HydraException, OmegaConfBaseException) as e:
        if debug:
            raise
        remove_if_refused()
        fail(config_error_line(e))
    except Exception as e:
        if debug or not sweep_started():
            raise  # a bug, not bad input: the traceback is what a report needs
        refusal = remove_if_refused()
        if refusal:  # every job refused the same way: bad input, and the sweep leaves nothing behind
            fail(f"every job of the sweep was refused: {refusal}")
        # a multirun: every job ran; the failed ones are recorded in their folders and the report
        fail(f"a job of the sweep failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
             "the leaderboard lists every job with its status and error", code=1)
    finally:
        write_report_if_sweep()
        # the interpreter's last garbage collection walks every object torch made at import: ~0.45 s
        # at each exit for nothing (files are closed, atexit handlers such as logging's still run)
        gc.freeze()
