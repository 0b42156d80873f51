"""Train one NPLM from the Hydra configs in conf/.

    python train.py                                   # the default recipe on the bundled names
    python train.py model.n_embd=24 optim.lr=0.05     # override anything
    python train.py -m model.n_embd=2,10,24           # a multirun sweep, one folder per job
    python train.py +sweep=grid                       # a named sweep from conf/sweep/
    python train.py experiment=lecture                # makemore part 2, exactly
    python train.py resume=outputs/runs/<run>         # continue an interrupted run in its folder
    python train.py --help                            # every key, its meaning, allowed values and default
"""
import sys

from nplm import plots, repro, wandb_log

if __name__ == "__main__":  # first, before torch is imported
    repro.pin(repro.wanted(sys.argv[1:]))  # reproducible mode: the numeric code paths, read when torch loads
    plots.start_worker()  # the workers import matplotlib and wandb on other cores meanwhile
    wandb_log.start_worker(sys.argv[1:])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nplm import command  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """One run, or one job of a sweep (nplm/command.py): its final val loss, for sweepers."""
    return command.job(cfg)


if __name__ == "__main__":
    command.main(main)  # --help, resume=, and the exit code
