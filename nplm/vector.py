"""The vectorised sweep: runs of a sweep that differ only in seed and learning rate train together.

Jobs of a multirun whose configs are equal except for MEMBER_KEYS (seed, learning rate and its
schedule) and settings that do not touch training (IGNORED) train as one stacked model: their
weights are stacked along a leading dimension and every step is one set of batched matrix products
(nplm/fast.py: stacked_sgd_steps) instead of R runs of small ones. Each run keeps its own
generator, seeded by its own seed: the same parameter draws and minibatches as training it alone,
so it lands where training it alone lands, within float rounding. Its training is kept here
(`take`), and its own Hydra job then records it as any run is recorded (folder, metrics.csv,
W&B, plots, samples, checkpoint, summary with `path: vectorized`).

Covered: the fast path's family (one tanh hidden layer, plain SGD; nplm/fast.py). Groups of at
least MIN_RUNS. On a GPU the stacked steps run as a CUDA graph (unless train.fast=off). On the CPU
they are compiled (an AOTInductor package, cached per shape and number of runs) where train.fast
says so: `on`, or `auto` when the group trains at least fast.MIN_STEPS steps in all. Else they run
eagerly.

Used by the launcher `+launcher=vectorized` (nplm/launcher); a group trains when the first of
its jobs comes up, on the threads nplm/threads.py chooses for the group's stacked work.
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

from nplm import fast, threads
from nplm.config import Config
from nplm.data import load_data
from nplm.evaluate import DivergenceWatch, divergence_limit, perplexity, split_loss
from nplm.model import NPLM
from nplm.optim import lrs_at

log = logging.getLogger("nplm")
MIN_RUNS = 2
# may differ between the runs of a group: each run's own generator and learning rates
MEMBER_KEYS = ("seed", "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.min_lr", "optim.decay_steps",
               "optim.decay_factor")
# do not touch training: recording, evaluation chunking, what happens after training, the thread count
IGNORED = ("wandb", "resume", "train.num_samples", "train.eval_chunk", "train.threads", "train.keep_best",
           "model.mix_order")


@dataclass
class Result:
    """One run's training, done in a group, waiting for its job to record it."""
    config: dict
    state: dict  # the model's final state_dict
    rows: list[dict] = field(default_factory=list)  # metrics rows, as the plain loop logs them
    best_val: float = math.inf
    best_step: int = -1
    best_state: dict | None = None
    train_time: float = 0.0  # this run's share of the group's training seconds
    diverged: tuple[int, float, str] | None = None  # (step, loss, which loss) where it diverged
    final: tuple[float, float] | None = None  # the final weights' train and dev loss over the full splits
    eval_time: float = 0.0  # seconds that took
    path: dict = field(default_factory=dict)


_results: dict[str, Result] = {}  # by run folder


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
    from nplm.train import resolve_device
    if cfg.resume:
        return "it resumes an interrupted run"
    if cfg.train.steps == 0:
        return "train.steps=0"
    try:
        device = resolve_device(cfg.device)
    except Exception as e:  # its own job reports the error
        return str(e)
    why = fast.unsupported(cfg, device, compiled=False)
    return f"the stacked steps do not cover {why}" if why else None


def plan(jobs: list[tuple[int, Config | None]]) -> list[list[int]]:
    """Groups (lists of job numbers, in order) of the coverable jobs with equal group keys, at
    least MIN_RUNS each. Jobs given as None (invalid configs, finished runs) are left out."""
    groups: dict[str, list[int]] = {}
    for num, cfg in jobs:
        if cfg is not None and why_not(cfg) is None:
            groups.setdefault(group_key(cfg), []).append(num)
    return [g for g in groups.values() if len(g) >= MIN_RUNS]


def take(out_dir: Path, cfg: Config) -> Result | None:
    """The group training of the run recorded in out_dir, if there is one (once)."""
    result = _results.pop(str(Path(out_dir).resolve()), None)
    if result is not None and result.config != dataclasses.asdict(cfg):
        log.warning("the vectorised training of %s was for another config; training it alone", out_dir)
        return None
    return result


def train_group(cfgs: list[Config], out_dirs: list[Path], labels: list[str]) -> None:
    """Train the runs `cfgs` (one group of plan()) as one stacked model; keep each run's Result
    for its job (take). `labels` name the runs in the progress lines."""
    from nplm.train import resolve_device
    cfg0, R = cfgs[0], len(cfgs)
    m, t = cfg0.model, cfg0.train
    device = resolve_device(cfg0.device)
    data = load_data(cfg0.data, m.block_size)
    torch.set_num_threads(threads.choose(cfg0, data.vocab.size, runs=R)[0])
    Xtr, Ytr = data.X["train"].to(device), data.Y["train"].to(device)
    Xdev, Ydev = data.X["dev"].to(device), data.Y["dev"].to(device)
    gens, models, diverging = [], [], []
    for cfg in cfgs:  # each run's own generator: parameter draws, then its minibatches, as alone
        g = torch.Generator().manual_seed(cfg.seed)
        model = NPLM(m, data.vocab.size)
        model.init_weights(m.init, g)
        gens.append(g)
        models.append(model.to(device))
        diverging.append(DivergenceWatch(divergence_limit(model, Xdev, Ydev, data.vocab.size)))
    C, W1, b1, W2, b2 = (torch.stack(ps) for ps in zip(*(fast.parameters(model) for model in models)))
    W1, W2, b2 = fast.pad(W1, W2, b2)  # faster matrix products, the same results
    stacked = [C, W1, b1, W2, b2]
    F, V = m.block_size * m.n_embd, data.vocab.size
    for r, model in enumerate(models):  # each model's parameters are views of its part: evaluation sees training
        model.C.data, model.hidden[0].weight.data, model.hidden[0].bias.data = C[r], W1[r, :F], b1[r]
        model.out.weight.data, model.out.bias.data = W2[r, :, :V], b2[r, :V]
    steps, how = _steps(cfgs, stacked, data.vocab.size, device)
    log.info("vectorised: %d runs (%s) train as one stacked model, %s, %d thread(s)", R,
             "; ".join(labels if R <= 6 else [*labels[:3], "...", labels[-1]]), how, torch.get_num_threads())
    results = [Result(config=dataclasses.asdict(cfg), state={}) for cfg in cfgs]
    alive = list(range(R))
    train_time, logged_time, since_log, step = 0.0, 0.0, 0, -1
    while step + 1 < t.steps and alive:
        t0 = time.perf_counter()
        boundary = min(t.steps, *((step + 1) // n * n + n for n in (t.log_interval, t.eval_interval)))
        n = min(fast.STEPS_PER_CALL, boundary - (step + 1))
        lr = list(zip(*(lrs_at(step + 1, n, cfg.optim, t.steps) for cfg in cfgs)))  # lr[k][r]
        lrs = torch.tensor(lr, dtype=torch.float32)
        ix = torch.stack([torch.randint(0, len(Xtr), (n, t.batch_size), generator=g) for g in gens], 1).to(device)
        losses = steps(Xtr[ix], Ytr[ix], lrs.to(device)).cpu()  # (n, R)
        train_time += time.perf_counter() - t0
        since_log += n
        for r in list(alive):
            bad = torch.nonzero(~torch.isfinite(losses[:, r]))
            if len(bad):  # as alone: the run stops at its first step whose loss is not finite
                k = int(bad[0])
                results[r].diverged = (step + 1 + k + 1, float(losses[k, r]), "training loss")
                alive.remove(r)
        step += n
        evaluate = (step + 1) % t.eval_interval == 0 or step == t.steps - 1
        if (step + 1) % t.log_interval == 0 or evaluate:
            rate, logged_time, since_log = since_log / max(train_time - logged_time, 1e-9), train_time, 0
            for r in list(alive):
                # times are this run's share of the group's: they add up to the sweep's
                row = {"step": step + 1, "train/loss": float(losses[-1, r]), "lr": lr[-1][r],
                       "elapsed": train_time / R, "steps_per_s": rate * R}
                val = split_loss(models[r], Xdev, Ydev, t.eval_chunk) if evaluate else None
                if diverging[r].train(row["train/loss"]):  # as alone: far above where it started
                    results[r].diverged = (step + 1, row["train/loss"], "training loss")
                elif val is not None and diverging[r].dev(val):
                    results[r].diverged = (step + 1, val, "dev loss")
                if results[r].diverged is not None:
                    alive.remove(r)
                    continue
                if evaluate:
                    row["val/loss"], row["val/ppl"] = val, perplexity(val)
                    if val < results[r].best_val:
                        results[r].best_val, results[r].best_step = val, step + 1
                        if cfgs[r].train.keep_best:
                            results[r].best_state = {k: v.detach().clone() for k, v in models[r].state_dict().items()}
                results[r].rows.append(row)
            dev = [results[r].rows[-1]["val/loss"] for r in alive] if evaluate and alive else []
            log.info("vectorised: step %*d/%d | train/loss %s |%s %.0f steps/s (x%d runs)", len(str(t.steps)),
                     step + 1, t.steps, _span([float(losses[-1, r]) for r in alive]),
                     f" val/loss {_span(dev)} |" if dev else "", rate, R)
    t0 = time.perf_counter()
    for r in alive:  # the final losses over the full splits, on all the group's threads (dev: measured at the last step)
        results[r].final = (split_loss(models[r], Xtr, Ytr, t.eval_chunk), results[r].rows[-1]["val/loss"])
    # seconds per run to evaluate both splits (the training split's measured, the dev split's in proportion)
    eval_share = (time.perf_counter() - t0) / max(1, len(alive)) * (len(Xtr) + len(Xdev)) / len(Xtr)
    path = {"path": "vectorized", "path_reason": f"trained with {R - 1} other run(s) of the sweep as one stacked "
                                                  f"model ({how})",
            "vector_runs": R, "vector_train_time_s": train_time, "vector_threads": torch.get_num_threads()}
    for r, model in enumerate(models):
        res = results[r]
        res.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        res.train_time, res.eval_time, res.path = train_time / R, eval_share, path
        _results[str(Path(out_dirs[r]).resolve())] = res


def _steps(cfgs: list[Config], stacked: list[torch.Tensor], vocab_size: int, device: torch.device):
    """The stacked step function: a CUDA graph on a GPU; on the CPU compiled where train.fast says
    so (and it builds); else eager. Returns (steps(X, Y, lrs) -> losses, a description)."""
    cfg0, R = cfgs[0], len(cfgs)
    mode, K = cfg0.train.fast, fast.STEPS_PER_CALL
    eager = fast.GraphSteps(stacked, K, cfg0.train.batch_size, cfg0.model.block_size, runs=R, capture=False)
    if device.type == "cuda" and mode != "off":
        try:
            return (fast.GraphSteps(stacked, K, cfg0.train.batch_size, cfg0.model.block_size, runs=R),
                    f"a CUDA graph of {K} steps per replay")
        except Exception as e:
            log.warning("the CUDA graph of the stacked steps is not available (%s); running them eagerly", e)
    take = mode == "on" or (mode == "auto" and R * cfg0.train.steps >= fast.MIN_STEPS)
    why = fast.unsupported(cfg0, device) if take and device.type == "cpu" else "not taken"
    if why is None:
        shape = fast.shape_of(cfg0, vocab_size, runs=R)
        package = fast.package_path(shape)
        if not package.is_file():
            log.info("building the compiled package for %d stacked runs of this shape (about a minute, once): %s",
                     R, package)
        try:
            compiled = fast.FastSteps(stacked, shape, package)

            def steps(X, Y, lrs):  # a call short of K steps (before a log or evaluation) runs eagerly
                return compiled(X, Y, lrs) if len(X) == compiled.K else eager(X, Y, lrs)
            return steps, f"compiled, {K} steps per call"
        except Exception as e:
            log.warning("the compiled stacked steps are not available (%s); running them eagerly", e)
    return eager, "batched matrix products, eagerly"


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.4f}" if len(values) == 1 else f"{min(values):.4f}..{max(values):.4f}"
