"""Hydra's launcher for vectorised sweeps (`+launcher=vectorized`). Hydra takes launchers only from its
`hydra_plugins` namespace: pyproject.toml installs this folder as `hydra_plugins.nplm_launcher`, the
name it is imported by (nplm/command.py calls `register()`).

It runs the jobs of a multirun one after another in this process, as Hydra's basic launcher does,
except that the jobs that can train together (nplm/sweep/vector.py: the same config but for seed and
learning rate) train as one stacked model when the first of them comes up, which writes each run's
training into its job folder; each job then records its own run from that training. Jobs that
cannot (other models or optimisers, invalid configs, runs that finished already or resume) run as
they would with the basic launcher.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nplm.checkpoint import STATE_NAME
from nplm.config import command_line_wins, to_config
from nplm.preflight import with_epochs
from nplm.resume import StopSignals, finished_val_loss
from nplm.sweep import vector
from nplm.sweep.folders import job_name

log = logging.getLogger("nplm")


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.nplm_launcher.VectorizedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="nplm_vectorized", node=VectorizedLauncherConf,
                             provider="nplm")


def _compose_once(loader) -> None:
    """Hydra's sweeper composes every job's config to check the batch before launching it, and the
    launcher then composes each again (~0.15 s a job): keep the first and hand out copies."""
    if getattr(loader, "_nplm_compose_once", False):
        return
    compose, composed = loader.load_sweep_config, {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key not in composed:
            composed[key] = compose(master_config, sweep_overrides)
        return copy.deepcopy(composed[key])
    loader.load_sweep_config = load_sweep_config
    loader._nplm_compose_once = True


class VectorizedLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        _compose_once(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("launching %d jobs (vectorised where they share a shape)", len(job_overrides))
        jobs = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = num
                sweep_config.hydra.job.num = num
            jobs.append((num, sweep_config, *self._job(sweep_config)))
        groups = vector.plan([(num, cfg) for num, _, cfg, _ in jobs])
        group_of = {num: group for group in groups for num in group}
        for num, _, cfg, _ in jobs:  # say why a job is not vectorised
            if num not in group_of:
                why = "it finished already, resumes, or its config is invalid" if cfg is None else (
                    vector.why_not(cfg) or "no other job differs from it only in seed and learning rate")
                log.info("job #%d trains on its own: %s", num, why)
        sweep_dir = str(self.config.hydra.sweep.dir)
        by_num = {num: (cfg, out_dir, f"#{num} {job_name(sweep_dir, list(sc.hydra.overrides.task), num)}")
                  for num, sc, cfg, out_dir in jobs}
        runs = []
        for num, sweep_config, _, _ in jobs:
            group = group_of.pop(num, None)
            if group is not None:  # the first job of its group: train them all now
                for other in group:
                    group_of.pop(other, None)
                members = [by_num[n] for n in group]
                try:
                    with StopSignals():  # SIGTERM too stops the sweep with a message (nothing to save yet)
                        vector.train_group([c for c, _, _ in members], [d for _, d, _ in members],
                                           [label for _, _, label in members])
                except Exception as e:  # the jobs then train one by one, as with the basic launcher
                    log.warning("vectorised training of jobs %s failed (%s: %s); they train one by one", group,
                                type(e).__name__, e)
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                config=sweep_config, job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    @staticmethod
    def _job(sweep_config: DictConfig):
        """(the job's validated Config, or None where it cannot train in a group; its run folder)."""
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)  # as run_job does: the folder may use ${hydra:...}
        try:
            out_dir = (Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir")))
                       / str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))).absolute()
            try:
                task = copy.deepcopy(sweep_config)  # what the task function gets: no hydra node
                with read_write(task), open_dict(task):
                    del task["hydra"]
                command_line_wins(task, list(OmegaConf.select(sweep_config, "hydra.overrides.task") or []))
                cfg = with_epochs(to_config(task))
                if (out_dir / STATE_NAME).is_file() or finished_val_loss(out_dir, cfg) is not None:
                    cfg = None  # resumes, or is skipped: its own job does that
            except Exception:  # an invalid config, or a folder that is not its own: its job reports why
                cfg = None
        finally:
            if saved is not None:
                HydraConfig.instance().cfg = saved
        return cfg, out_dir


def register() -> None:
    """Make the launcher known to Hydra. An installed package's hydra_plugins are found by Hydra's
    scan; an editable install's are not, hence this (called by nplm/command.py before Hydra starts)."""
    from hydra.core.plugins import Plugins
    Plugins.instance().register(VectorizedLauncher)
