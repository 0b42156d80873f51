"""The vectorised sweep: runs of a sweep that differ only in seed and learning rate train together.

Jobs of a multirun whose configs are equal except for MEMBER_KEYS (seed, learning rate and its
schedule) and settings that do not touch training (IGNORED) train as one stacked model: their
weights are stacked along a leading dimension and every step is one set of batched matrix products
(nplm/fast.py: stacked_sgd_steps) instead of R runs of small ones. Each run keeps its own
generator, seeded by its own seed: the same parameter draws and minibatches as training it alone,
so it lands where training it alone lands, within float rounding. The loop is nplm/loop.py's:
the same Cadence decides when each run logs and evaluates, and each run has its own Monitor.

Each run's training is written to its job folder (RESULT_NAME), and its own Hydra job then records
it as any run is recorded (folder, metrics.csv, W&B, plots, samples, checkpoint, summary with
`path: vectorized`): nplm/train.py replays it (GroupResult.replay) instead of training.

Covered: the fast path's family (one tanh hidden layer, plain SGD; nplm/fast.py). Groups of at
least MIN_RUNS. How the stacked steps run is nplm/fast.py's choice (steps_for): a CUDA graph on a
GPU, compiled on the CPU where train.fast says so, else eagerly.

Used by the launcher `+launcher=vectorized` (nplm/sweep/launcher); a group trains when the
first of its jobs comes up, on the threads nplm/threads.py chooses for the group's stacked work.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nplm import fast, repro, threads
from nplm.checkpoint import save_atomic
from nplm.config import Config
from nplm.data import load_data
from nplm.evaluate import divergence_limit, split_loss
from nplm.loop import Cadence, Diverged, Fit, Monitor, batch, progress
from nplm.model import make_model
from nplm.optim import lrs_at
from nplm.preflight import resolve_device
from nplm.tracking import Tracker

log = logging.getLogger("nplm")
MIN_RUNS = 2
# may differ between the runs of a group: each run's own generator and learning rates
MEMBER_KEYS = ("seed", "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.min_lr", "optim.decay_steps",
               "optim.decay_factor")
# do not touch training: recording, evaluation chunking, what happens after training, the thread count
IGNORED = ("wandb", "resume", "train.num_samples", "train.eval_chunk", "train.threads", "train.keep_best",
           "model.mix_order")


RESULT_NAME = "vectorized.pt"  # a run's training, done in its group, waiting in its job folder


@dataclass
class GroupResult:
    """One run's training, done in a group, for its job to record (saved in its folder until then)."""
    config: dict
    state: dict  # the model's final state_dict
    rows: list[dict] = field(default_factory=list)  # metrics rows, as the loop of one run logs them
    best_val: float = math.inf
    best_step: int = -1
    best_state: dict | None = None
    train_time: float = 0.0  # this run's share of the group's training seconds
    diverged: tuple | None = None  # Diverged's args (step, loss, seconds, which loss) where it diverged
    final: tuple[float, float] | None = None  # the final weights' train and val loss over the full splits
    eval_time: float = 0.0  # seconds that took
    path: dict = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_atomic(dataclasses.asdict(self), Path(run_dir) / RESULT_NAME)

    def replay(self, cfg: Config, model: torch.nn.Module, tracker: Tracker) -> Fit:
        """Its weights into the model, its metrics rows into its record, as nplm/loop.py's fit would
        have left them. Raises Diverged where it diverged."""
        model.load_state_dict(self.state)
        log.info("training path: vectorised (%s)", self.path["path_reason"])
        for row in self.rows:
            tracker.log(row)
            progress(cfg, row, 1 / row["steps_per_s"])
        if self.diverged is not None:
            raise Diverged(*self.diverged)
        return Fit(self.best_val, self.best_step, self.train_time, self.best_state, self.path)


def take(run_dir: Path, cfg: Config) -> GroupResult | None:
    """The group training of the run of `cfg` in run_dir, if its group trained it (once: the file goes)."""
    path = Path(run_dir) / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = GroupResult(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # a damaged file: the run trains alone, as it would have
        log.warning("the vectorised training in %s is not readable (%s); training it alone", path, e)
        result = None
    path.unlink()
    if result is not None and result.config != dataclasses.asdict(cfg):
        log.warning("the vectorised training in %s was for another config; training it alone", run_dir)
        return None
    return result


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_key(cfg: Config) -> str:
    """Runs with equal keys can train as one stacked model."""
    flat = _flat(dataclasses.asdict(cfg))
    keep = {k: v for k, v in flat.items()
            if k not in MEMBER_KEYS and not any(k == i or k.startswith(i + ".") for i in IGNORED)}
    return json.dumps(keep, sort_keys=True, default=str)


def why_not(cfg: Config) -> str | None:
    """Why this run cannot train in a group (None if it can)."""
    if cfg.resume:
        return "it resumes an interrupted run"
    if cfg.train.steps == 0:
        return "train.steps=0"
    if cfg.train.patience:
        return "train.patience: early stopping ends each run at its own step"
    try:
        device = resolve_device(cfg.device)
    except Exception as e:  # its own job reports the error
        return str(e)
    why = fast.unsupported(cfg, device, compiled=False, stacked=True)
    return f"the stacked steps do not cover {why}" if why else None


def plan(jobs: list[tuple[int, Config | None]]) -> list[list[int]]:
    """Groups (lists of job numbers, in order) of the coverable jobs with equal group keys, at
    least MIN_RUNS each. Jobs given as None (invalid configs, finished runs) are left out."""
    groups: dict[str, list[int]] = {}
    for num, cfg in jobs:
        if cfg is not None and why_not(cfg) is None:
            groups.setdefault(group_key(cfg), []).append(num)
    return [g for g in groups.values() if len(g) >= MIN_RUNS]


def train_group(cfgs: list[Config], out_dirs: list[Path], labels: list[str]) -> None:
    """Train the runs `cfgs` (one group of plan()) as one stacked model; write each run's
    GroupResult into its folder for its job (take). `labels` name the runs in the progress lines."""
    cfg0, R = cfgs[0], len(cfgs)
    m, t = cfg0.model, cfg0.train
    device = resolve_device(cfg0.device)
    data = load_data(cfg0.data, m.block_size)
    torch.set_num_threads(threads.choose(cfg0, data.vocab.size, runs=R)[0])
    if cfg0.reproducible:  # as each run alone (nplm/preflight.py): deterministic algorithms
        repro.settle()
    Xtr, Ytr = data.X["train"].to(device), data.Y["train"].to(device)
    Xval, Yval = data.X["val"].to(device), data.Y["val"].to(device)
    gens = [torch.Generator().manual_seed(cfg.seed) for cfg in cfgs]  # each run's own: parameters, then minibatches
    models = [make_model(m, data.vocab.size, g).to(device) for g in gens]
    monitors = [Monitor(divergence_limit(model, Xval, Yval, data.vocab.size), cfg.train.keep_best, Xval, Yval,
                        t.eval_chunk) for cfg, model in zip(cfgs, models)]
    stacked = _stack(models, data.vocab.size)
    steps, info = fast.steps_for(cfg0, lambda: stacked, data.vocab.size, device, runs=R)
    how = HOW[info["path"]]
    log.info("vectorised: %d runs (%s) train as one stacked model, %s, %d thread(s)", R,
             "; ".join(labels if R <= 6 else [*labels[:3], "...", labels[-1]]), how, torch.get_num_threads())
    results = [GroupResult(config=dataclasses.asdict(cfg), state={}) for cfg in cfgs]
    cadence, alive = Cadence(t.steps, t.log_interval, t.eval_interval), list(range(R))
    train_time, logged_time, since_log, done = 0.0, 0.0, 0, 0
    while done < t.steps and alive:
        t0 = time.perf_counter()
        n = min(fast.STEPS_PER_CALL, cadence.next_stop(done) - done)
        lr = list(zip(*(lrs_at(done, n, cfg.optim, t.steps) for cfg in cfgs)))  # lr[k][r]
        ix = torch.stack([torch.randint(0, len(Xtr), (n, t.batch_size), generator=g) for g in gens], 1).to(device)
        xb, yb = batch(Xtr, Ytr, ix.view(-1))
        losses = steps(xb.view(*ix.shape, -1), yb.view(ix.shape),
                       torch.tensor(lr, dtype=torch.float32).to(device)).cpu()  # (n, R)
        train_time += time.perf_counter() - t0
        since_log += n
        _stop_not_finite(losses, alive, results, done, train_time / R)
        done += n
        if cadence.logs(done):
            rate, logged_time, since_log = since_log / max(train_time - logged_time, 1e-9), train_time, 0
            for r in list(alive):
                try:  # times are this run's share of the group's: they add up to the sweep's
                    row = monitors[r].row(done, float(losses[-1, r]), lr[-1][r], train_time / R, rate * R,
                                          models[r] if cadence.evaluates(done) else None)
                except Diverged as e:
                    results[r].diverged = e.args
                    alive.remove(r)
                    continue
                results[r].rows.append(row)
            val = [results[r].rows[-1]["val/loss"] for r in alive] if cadence.evaluates(done) and alive else []
            log.info("vectorised: step %*d/%d | train/loss %s |%s %.0f steps/s (x%d runs)", len(str(t.steps)),
                     done, t.steps, _span([float(losses[-1, r]) for r in alive]),
                     f" val/loss {_span(val)} |" if val else "", rate, R)
    t0 = time.perf_counter()
    for r in alive:  # the final losses over the full splits, on all the group's threads (val: at the last step)
        results[r].final = (split_loss(models[r], Xtr, Ytr, t.eval_chunk), results[r].rows[-1]["val/loss"])
    # seconds per run to evaluate both splits (the training split's measured, the val split's in proportion)
    eval_share = (time.perf_counter() - t0) / max(1, len(alive)) * (len(Xtr) + len(Xval)) / len(Xtr)
    path = {"path": "vectorized", "path_reason": f"trained with {R - 1} other run(s) of the sweep as one stacked "
                                                  f"model ({how})",
            "vector_runs": R, "vector_train_time_s": train_time, "vector_threads": torch.get_num_threads()}
    for r, model in enumerate(models):
        res = results[r]
        best = monitors[r]
        res.best_val, res.best_step, res.best_state = best.best_val, best.best_step, best.best_state
        res.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        res.train_time, res.eval_time, res.path = train_time / R, eval_share, path
        res.save(out_dirs[r])


def _stop_not_finite(losses: torch.Tensor, alive: list[int], results: list[GroupResult], done: int,
                     elapsed: float) -> None:
    """As alone: a run stops at its first step whose loss (losses[k, r]) is not finite."""
    for r in list(alive):
        bad = torch.nonzero(~torch.isfinite(losses[:, r]))
        if len(bad):
            k = int(bad[0])
            results[r].diverged = (done + k + 1, float(losses[k, r]), elapsed, "training loss")
            alive.remove(r)


HOW = {"cuda_graph": f"a CUDA graph of {fast.STEPS_PER_CALL} steps per replay",
       "compiled": f"compiled, {fast.STEPS_PER_CALL} steps per call", "eager": "batched matrix products, eagerly"}


def _stack(models: list[torch.nn.Module], vocab_size: int) -> list[torch.Tensor]:
    """The models' parameters stacked (and padded, fast.pad) for the step functions; each model's
    parameters become views of its part, so that evaluating a model sees the stacked training."""
    C, W1, b1, W2, b2 = (torch.stack(ps) for ps in zip(*(fast.parameters(model) for model in models)))
    W1, W2, b2 = fast.pad(W1, W2, b2)  # faster matrix products, the same results
    F, V = models[0].hidden[0].weight.shape[0], vocab_size
    for r, model in enumerate(models):
        model.C.data, model.hidden[0].weight.data, model.hidden[0].bias.data = C[r], W1[r, :F], b1[r]
        model.out.weight.data, model.out.bias.data = W2[r, :, :V], b2[r, :V]
    return [C, W1, b1, W2, b2]


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.4f}" if len(values) == 1 else f"{min(values):.4f}..{max(values):.4f}"
