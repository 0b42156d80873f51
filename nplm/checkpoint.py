"""Checkpoints: save a run (model, optimizer, step, vocabulary, config) atomically; load it safely.

Two files per run folder. `ckpt.pt`, written when a run finishes: the trained model, for sample,
evaluate and later commands (contents follow nanoGPT). `last.pt`, written during training: the whole
training state, for resuming (nplm/resume.py); removed when the run finishes. Everything is tensors
and plain Python values, so loading uses torch.load(weights_only=True), which never unpickles
arbitrary objects. Large tables whose rows are mostly zero (the hashed n-gram table of
model.maxent_order and its AdamW moments: most hashed contexts never occur) are stored as their
non-zero rows only, and come back dense on loading.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nplm.config import Config, from_dict, upgrade
from nplm.mixture import Mixture
from nplm.model import NPLM
from nplm.ngram import NGram

CKPT_NAME = "ckpt.pt"
STATE_NAME = "last.pt"
STATE_FORMAT = "nplm-train-state-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not an nplm checkpoint."""


def save_checkpoint(path: Path, *, model, optimizer, step: int, best_val_loss: float,
                    cfg: Config, itos: list[str], weights_step: int | None = None) -> None:
    """`step`: the steps trained; `weights_step`: the step the saved weights are from, if earlier
    (train.keep_best)."""
    state = {
        "format": "nplm-checkpoint-1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,  # None: a count model
        "step": step,
        "weights_step": step if weights_step is None else weights_step,
        "best_val_loss": best_val_loss,
        "config": dataclasses.asdict(cfg),
        "itos": itos,
    }
    save_atomic(state, path)


SPARSE_MIN = 1 << 20  # tensors this large (elements) are checked for zero rows when saved


def _pack(obj, memo: dict):
    """obj with every large 2-D float tensor that is at least half zero rows as a sparse tensor of its
    non-zero rows (a tensor saved twice, as the model's and the weight average's, packed once)."""
    if isinstance(obj, dict):
        return {k: _pack(v, memo) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_pack(v, memo) for v in obj)
    if torch.is_tensor(obj) and obj.dim() == 2 and obj.numel() >= SPARSE_MIN and obj.is_floating_point() \
            and not obj.is_sparse:
        key = (obj.data_ptr(), obj.shape, obj.stride())
        if key not in memo:
            rows = (obj != 0).any(1).nonzero().flatten()
            memo[key] = obj if 2 * len(rows) > len(obj) else torch.sparse_coo_tensor(
                rows[None], obj[rows], obj.shape, check_invariants=False, is_coalesced=True)
        return memo[key]
    return obj


def _unpack(obj):
    if isinstance(obj, dict):
        return {k: _unpack(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_unpack(v) for v in obj)
    return obj.to_dense() if torch.is_tensor(obj) and obj.is_sparse else obj


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary file, flushed to disk, then renamed: whoever reads `path`, and a
    process killed mid-write, sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(_pack(state, {}), f)
            f.flush()
            os.fsync(f.fileno())
    except Exception as e:
        tmp.unlink(missing_ok=True)
        # a signal's exception (resume.Interrupted: a second Ctrl-C) raised inside torch's zip writer
        # makes the writer's close fail too ("unexpected pos"); the signal is what happened
        if getattr(e.__context__, "signum", None) is not None:
            raise e.__context__ from None
        raise
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    try:
        state = _unpack(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # truncated, foreign or unsafe pickles all land here
        raise CheckpointError(f"{str(path)!r} is not a readable nplm checkpoint ({type(e).__name__}); "
                              "it may be truncated or from another program") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} is not an nplm checkpoint")
    return state


@dataclass
class TrainState:
    """Everything an interrupted run needs to go on exactly where it stopped: the record `last.pt`
    holds (written at every evaluation and when a signal stops the run; nplm/resume.py)."""
    step: int  # steps done
    config: dict  # the run's config, dataclasses.asdict
    model: dict  # state_dicts: the model, the optimiser, the weight average (train.ema)
    optimizer: dict
    ema: dict | None = None
    rng: dict = field(default_factory=dict)  # generator states: "train" (parameters, minibatches), "torch", "cuda"
    best_val_loss: float = math.inf
    best_step: int = -1
    best_state: dict | None = None  # the weights of best_step (train.keep_best)
    val_loss: float = math.nan  # at the last evaluation
    train_time: float = 0.0  # seconds training so far
    wall_time: float = 0.0  # seconds since the run began, over all its parts
    wandb_id: str | None = None  # the W&B run it continues
    resumed_at: list[int] = field(default_factory=list)  # the steps earlier parts were resumed at

    def save(self, run_dir: Path) -> None:
        """Atomically to run_dir/last.pt."""
        save_atomic({"format": STATE_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}},
                    Path(run_dir) / STATE_NAME)

    @classmethod
    def load(cls, run_dir: Path) -> TrainState:
        """The training state a run saved to resume from, checked; CheckpointError if unusable."""
        path = Path(run_dir) / STATE_NAME
        if not path.is_file():
            raise CheckpointError(f"{str(run_dir)!r} holds no saved training state ({STATE_NAME}); give the folder "
                                  "of an interrupted run (its summary.json says status interrupted)")
        saved = _load(path)
        if saved.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{str(path)!r} is not an nplm training state (no {STATE_FORMAT} format tag)")
        names = {f.name for f in dataclasses.fields(cls)}
        if "wall_time" not in saved:  # saved before the state recorded it
            saved["wall_time"] = saved.get("train_time", 0.0)
        if isinstance(saved.get("config"), dict):
            saved["config"] = upgrade(saved["config"])
        try:
            return cls(**{k: v for k, v in saved.items() if k in names})
        except TypeError as e:
            raise CheckpointError(f"{str(path)!r} is an incomplete nplm training state ({e})") from None


def load_checkpoint(run_dir: str | Path) -> tuple[dict, Config]:
    """The checkpoint dict of a run folder (or a .pt file) and its config as validated dataclasses."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        if (path.parent / STATE_NAME).is_file():
            raise CheckpointError(f"the run in {str(path.parent)!r} has not finished (it was interrupted); "
                                  f"finish it with: python train.py resume={path.parent}")
        raise CheckpointError(f"no checkpoint at {str(path)!r}; give the folder of a finished run "
                              "(it holds ckpt.pt)")
    state = _load(path)
    if state.get("format") != "nplm-checkpoint-1":
        raise CheckpointError(f"{str(path)!r} is not an nplm checkpoint (no nplm format tag)")
    return state, from_dict(state["config"])


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[NPLM | NGram | Mixture, Config, dict]:
    """The trained model of a run (in eval mode, on `device`), its config and its checkpoint dict."""
    state, cfg = load_checkpoint(run_dir)
    m = cfg.model
    if m.type == "ngram":
        return NGram(m.order, len(state["itos"]), m.block_size).load_counts(state["model"]).eval(), cfg, state
    model = NPLM(m, len(state["itos"]))
    weights = state["model"]
    if m.mix_order:  # the paper's mixture: the network, the n-gram's counts, the network's weight
        parts = {name: {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(name + ".")}
                 for name in ("nplm", "ngram")}
        weights = parts["nplm"]
        ngram = NGram(m.mix_order, len(state["itos"]), m.block_size).load_counts(parts["ngram"])
    try:
        model.load_state_dict(weights)
        if m.mix_order:
            model = Mixture(model, ngram, float(state["model"]["weight"]))
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"the checkpoint's weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), cfg, state
