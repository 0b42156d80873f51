"""Start-up checks: what a run must pass before it writes anything.

The config is validated when it is composed (nplm/config.py); what depends on the machine and the
data is checked here: the device, the data itself, settings that do not fit the data (a batch larger
than the training split, an n-gram order whose counts cannot be keyed, a hashed n-gram table). A
run they refuse raises ConfigError or DataError and leaves nothing behind. Settings that are valid
but cannot help get a warning; the thread count is set (nplm/threads.py), and the run says whether it
is reproducible across CPUs (nplm/repro.py).
"""
from __future__ import annotations

import logging
import math

import torch

from nplm import repro, threads
from nplm.config import Config, ConfigError, setting_warnings
from nplm.data import Dataset, load_data
from nplm.model import MaxEnt

log = logging.getLogger("nplm")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if there is a GPU, else cpu. Asking for a GPU that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but torch sees no CUDA GPU here; use device=cpu or device=auto")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"device={name} but there {'is only 1 GPU' if n == 1 else f'are only {n} GPUs'}; "
                              f"use {'cuda:0' if n == 1 else f'cuda:0 to cuda:{n - 1}'} or device=auto")
    return torch.device(name)


def with_epochs(cfg: Config) -> Config:
    """`cfg` with train.steps worked out from train.epochs (and train.eval_interval=0 made one epoch's
    steps), from the size of the training split; unchanged without train.epochs, for a count model
    or a tool. Applied when a config is composed or resumed, before it is compared with a saved one,
    so a run's saved config holds the steps it trains and a re-run of the same command matches it."""
    t = cfg.train
    if not t.epochs or cfg.model.type == "ngram" or cfg.mode != "train":
        return cfg
    examples = len(load_data(cfg.data, cfg.model.block_size).Y["train"])  # kept for preflight: read once
    t.steps = math.ceil(t.epochs * examples / t.batch_size)
    if t.eval_interval == 0:
        t.eval_interval = math.ceil(examples / t.batch_size)
    return cfg


def preflight(cfg: Config) -> tuple[torch.device, Dataset]:
    """The checks a run must pass before it writes anything (raise ConfigError or DataError);
    warnings for settings that cannot help; the thread count. Returns the device and the dataset."""
    m, t = cfg.model, cfg.train
    mode = repro.check(cfg.reproducible)  # the process's pins are the config's (nplm/repro.py)
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, m.block_size)
    V = data.vocab.size
    if m.type != "ngram":
        if t.batch_size > len(data.X["train"]):
            raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {len(data.X['train'])} training "
                              "examples; lower train.batch_size")
        if m.maxent_order:
            MaxEnt.check(m.maxent_order, m.maxent_buckets, V)
        _warn_long_context(cfg, data)
        if t.epochs and cfg.mode == "train":
            log.info("train.epochs=%g: %d steps of %d over %d training examples, evaluated every %d steps",
                     t.epochs, t.steps, t.batch_size, len(data.Y["train"]), t.eval_interval)
    for warning in setting_warnings(cfg):
        log.warning(warning)
    torch.set_num_threads(threads.choose(cfg, V)[0])
    if cfg.reproducible:
        repro.settle()
    log.info(mode)
    return device, data


def _warn_long_context(cfg: Config, data: Dataset) -> None:
    """A context longer than the longest word (or line) plus one only ever reads the boundary there."""
    block_size, words = cfg.model.block_size, cfg.data.level == "word"
    longest = max(len(w.split()) if words else len(w) for s in data.words.values() for w in s)
    if block_size > longest + 1:
        log.warning("model.block_size=%d is longer than the longest %s (%d %s) plus one: the extra %d positions "
                    "always hold the boundary, so they add parameters and time but cannot lower the loss; "
                    "model.block_size=%d reads every one whole", block_size, "line" if words else "word", longest,
                    "tokens" if words else "characters", block_size - longest - 1, longest + 1)
