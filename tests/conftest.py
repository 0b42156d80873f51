"""Shared fixtures: real Hydra composition, real subprocess runs of the real commands."""
import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nplm.config import register_schema

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# Tiny, fast settings for end-to-end runs: a real run of the real command in seconds.
TINY = ["train.steps=60", "train.batch_size=32", "train.eval_interval=30", "train.log_interval=20",
        "model.n_embd=4", "model.n_hidden=16", "train.num_samples=5", "device=cpu", "train.threads=1"]
# Shorter still, without W&B: for sweeps of several jobs.
QUICK = [*TINY, "train.steps=20", "train.eval_interval=10", "train.log_interval=10", "wandb.mode=disabled"]

# The tests do not depend on the user's environment or caches: W&B offline and silent whatever the
# user's WANDB_* or proxy settings say, compiled packages in a cache of this session's own
# (nplm/fast.py reads NPLM_CACHE when imported, after this file). The CPU code path
# (ATEN_CPU_CAPABILITY, MKL_CBWR) is left as given: CI runs the suite a second time with another one
# forced.
for _key in [k for k in os.environ if k.startswith("WANDB_") or k.lower().endswith("_proxy")]:
    del os.environ[_key]
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true",
                  NPLM_CACHE=tempfile.mkdtemp(prefix="nplm-test-cache-"))
atexit.register(shutil.rmtree, os.environ["NPLM_CACHE"], ignore_errors=True)
register_schema()


def compose_cfg(overrides=()):
    """Compose conf/config.yaml exactly as train.py does, with command-line style overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cmd(args, cwd=ROOT, check=True, timeout=300):
    """Run a project command (train.py or a script) with this interpreter; return the process."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def killed_if_left(proc: subprocess.Popen):
    """The block, then `proc` killed if it still runs (a test that failed before the process ended)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def summary(run_dir) -> dict:
    """A run's summary.json."""
    return json.loads((Path(run_dir) / "summary.json").read_text())


def train(run_dir, *overrides, check=True):
    return run_cmd([ROOT / "train.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"], check=check)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished tiny run, shared by the tests that only read its folder."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(run_dir)
    return run_dir
