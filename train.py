"""Train one NPLM from the Hydra configs in conf/.

    python train.py                                   # the default recipe on the bundled names
    python train.py model.n_embd=24 optim.lr=0.05     # override anything
    python train.py -m model.n_embd=2,10,24           # a multirun sweep, one folder per job
    python train.py experiment=lecture                # makemore part 2, exactly
"""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nplm.checkpoint import CheckpointError
from nplm.config import ConfigError, register_schema, to_config
from nplm.data import DataError
from nplm.train import run

register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        return run(to_config(cfg), Path(hc.runtime.output_dir))
    except (ConfigError, DataError, CheckpointError) as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the others
        logging.getLogger("nplm").error("error: %s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
