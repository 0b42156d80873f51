"""Train one NPLM from the Hydra configs in conf/.

    python train.py                                   # the default recipe on the bundled names
    python train.py model.n_embd=24 optim.lr=0.05     # override anything
    python train.py -m model.n_embd=2,10,24           # a multirun sweep, one folder per job
    python train.py +sweep=grid                       # a named sweep from conf/sweep/
    python train.py experiment=lecture                # makemore part 2, exactly
"""
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nplm.cli import USER_ERRORS
from nplm.config import register_schema, to_config
from nplm.sweep import finished_dev_loss, job_name, write_report_if_sweep
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
    try:
        main()
    finally:
        write_report_if_sweep()
