"""Train one NPLM from the Hydra configs in conf/.

    python train.py                                   # the default recipe on the bundled names
    python train.py model.n_embd=24 optim.lr=0.05     # override anything
    python train.py -m model.n_embd=2,10,24           # a multirun sweep, one folder per job
    python train.py +sweep=grid                       # a named sweep from conf/sweep/
    python train.py experiment=lecture                # makemore part 2, exactly
"""
import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nplm.cli import USER_ERRORS, config_error_line, fail
from nplm.config import register_schema, to_config
from nplm.sweep import finished_dev_loss, job_name, sweep_started, write_report_if_sweep
from nplm.tracking import save_summary
from nplm.train import run

log = logging.getLogger("nplm")
register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        config = to_config(cfg)
        done = finished_dev_loss(out_dir, config)
        if done is not None:
            log.info("skipping job %s: it finished already in %s (dev loss %.4f)", hc.job.num, out_dir, done)
            return done
        group, name = (hc.sweep.dir, job_name(hc.sweep.dir, list(hc.overrides.task), hc.job.num)) if multirun \
            else (None, None)
        dev_loss = run(config, out_dir, group=group, name=name)
        if not math.isfinite(dev_loss):
            if not multirun:
                sys.exit(1)  # diverged: the message is logged, the record is in the run folder
            return math.inf  # sweepers minimise it: never NaN
        return dev_loss
    except USER_ERRORS as e:
        if multirun:
            if not (out_dir / "summary.json").exists():  # the sweep's report lists the failed job
                save_summary(out_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                       "overrides": list(hc.overrides.task)})
            raise  # Hydra records the failed job and goes on with the others
        log.error("error: %s", e)
        sys.exit(2)


if __name__ == "__main__":
    # Composition errors (unknown keys, wrong types, bad override syntax, a missing config) come
    # back here as exceptions and leave as one line and exit 2. HYDRA_FULL_ERROR=1 is the debug
    # flag: then Hydra's full traceback is shown instead.
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if debug:
            raise
        fail(config_error_line(e))
    except Exception as e:
        if debug or not sweep_started():
            raise  # a bug, not bad input: the traceback is what a report needs
        # a multirun: every job ran; the failed ones are recorded in their folders and the report
        fail(f"a job of the sweep failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
             "the leaderboard lists every job with its status and error", code=1)
    finally:
        write_report_if_sweep()
