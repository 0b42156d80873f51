"""Checkpoints: save a run (model, optimizer, step, vocabulary, config) atomically; load it safely.

Contents follow nanoGPT. Everything is tensors and plain Python values, so loading uses
torch.load(weights_only=True), which never unpickles arbitrary objects.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nplm.config import Config, validate
from nplm.mixture import Mixture
from nplm.model import NPLM
from nplm.ngram import NGram

CKPT_NAME = "ckpt.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not an nplm checkpoint."""


def save_checkpoint(path: Path, *, model, optimizer, step: int, best_val_loss: float,
                    cfg: Config, itos: list[str]) -> None:
    state = {
        "format": "nplm-checkpoint-1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,  # None: a count model
        "step": step,
        "best_val_loss": best_val_loss,
        "config": dataclasses.asdict(cfg),
        "itos": itos,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one


def load_checkpoint(run_dir: str | Path) -> tuple[dict, Config]:
    """The checkpoint dict of a run folder (or a .pt file) and its config as validated dataclasses."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; give the folder of a finished run "
                              "(it holds ckpt.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or unsafe pickles all land here
        raise CheckpointError(f"{str(path)!r} is not a readable nplm checkpoint ({type(e).__name__}); "
                              "it may be truncated or from another program") from None
    if not isinstance(state, dict) or state.get("format") != "nplm-checkpoint-1":
        raise CheckpointError(f"{str(path)!r} is not an nplm checkpoint (no nplm format tag)")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), state["config"]))
    return state, validate(cfg)


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
