"""Training: `run(cfg, out_dir)` trains one NPLM and writes its record; it returns the final dev loss.

Reads top to bottom: device and threads, data, model, optimiser, the loop (minibatch SGD/AdamW
with periodic full-dev evaluation), then final full-split losses, samples, checkpoint, summary.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nplm import plots
from nplm.checkpoint import CKPT_NAME, STATE_FORMAT, STATE_NAME, save_atomic, save_checkpoint
from nplm.config import Config, ConfigError, setting_warnings
from nplm.data import SPLITS, Dataset, load_data
from nplm import fast, threads, vector
from nplm.evaluate import FAR, DivergenceWatch, divergence_limit, perplexity, split_loss
from nplm.mixture import Mixture, fit_weight
from nplm.model import NPLM, MaxEnt
from nplm.ngram import NGram, check_order
from nplm.optim import EMA, Optimizer, clip_grad_norm, lr_at, lrs_at, make_optimizer
from nplm.resume import Interrupted, StopSignals
from nplm.sample import label_words, sample_words
from nplm.threads import SpeedWatch
from nplm.tools import lr_find, overfit_batch
from nplm.tracking import Tracker, save_summary

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


def run(cfg: Config, out_dir: Path, group: str | None = None, name: str | None = None,
        resume: dict | None = None) -> float:
    """Train one model as `cfg` says, record it in `out_dir`, and return the final dev loss.

    `group` and `name` label the W&B run (a sweep's folder and the job's overrides). `resume` is the
    training state an interrupted run saved in out_dir (nplm/resume.py): training continues from it.
    The config, the device and the data are checked first (`preflight`): a run they refuse raises
    ConfigError or DataError before anything is written. Once it starts, if anything raises,
    summary.json still records the run as failed (or interrupted), with the error; SIGINT and
    SIGTERM during training save the state first.
    """
    # the run's wall time counts from here, plus the earlier parts of a resumed run
    t_start = time.perf_counter() - (resume.get("wall_time", resume["train_time"]) if resume else 0.0)
    out_dir = Path(out_dir)
    if cfg.data.path:  # recorded absolute, so that later commands find the data from any directory
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    device, data = preflight(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    tracker, failed = None, True
    with StopSignals() as stop:
        try:
            tracker = Tracker(out_dir, cfg.wandb, dataclasses.asdict(cfg), group, name,
                              resume_step=resume["step"] if resume else None,
                              wandb_id=resume["wandb_id"] if resume else None)
            dev_loss = train(cfg, data, device, tracker, out_dir, t_start, stop, resume)
            failed = False
            (out_dir / STATE_NAME).unlink(missing_ok=True)  # finished: ckpt.pt is the record now
            return dev_loss
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
            summary = {"status": "interrupted" if interrupted else "failed",
                       "error": f"{type(e).__name__}: {e}", "wall_time_s": time.perf_counter() - t_start,
                       "seed": cfg.seed, **provenance(), "config": dataclasses.asdict(cfg)}
            if (out_dir / STATE_NAME).is_file():
                summary["resume_command"] = f"python train.py resume={out_dir}"
            if tracker is not None:
                tracker.write_summary(summary)
            else:
                save_summary(out_dir, summary)
            raise
        finally:
            if tracker is not None:
                tracker.close(failed=failed)


def preflight(cfg: Config) -> tuple[torch.device, Dataset]:
    """The checks a run must pass before it writes anything: the device, the data, the settings
    that depend on the data (raise ConfigError or DataError); warnings for settings that cannot
    help; the thread count. Returns the device and the dataset."""
    m, t = cfg.model, cfg.train
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, m.block_size)
    V = data.vocab.size
    if m.type == "ngram":
        check_order(m.order, V)
    else:
        if t.batch_size > len(data.X["train"]):
            raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {len(data.X['train'])} training "
                              "examples; lower train.batch_size")
        if m.maxent_order:
            MaxEnt.check(m.maxent_order, m.maxent_buckets, V)
        longest = max(len(w.split()) if cfg.data.level == "word" else len(w) for s in data.words.values() for w in s)
        if m.block_size > longest + 1:
            unit = "tokens" if cfg.data.level == "word" else "characters"
            log.warning("model.block_size=%d is longer than the longest %s (%d %s) plus one: the extra %d positions "
                        "always hold the boundary, so they add parameters and time but cannot lower the loss; "
                        "model.block_size=%d reads every one whole", m.block_size,
                        "line" if cfg.data.level == "word" else "word", longest, unit, m.block_size - longest - 1,
                        longest + 1)
    for warning in setting_warnings(cfg):
        log.warning(warning)
    torch.set_num_threads(threads.choose(cfg, V)[0])
    return device, data


class Diverged(Exception):
    """The loss became NaN or inf, or rose far above where training started (evaluate.divergence_limit).
    args: (step, loss, training seconds, what: 'training loss' or 'dev loss')."""


def train(cfg: Config, data: Dataset, device: torch.device, tracker: Tracker, out_dir: Path,
          t_start: float, stop: StopSignals, resume: dict | None = None) -> float:
    """Fit the model (the training loop, or counting for model=ngram), then record the final
    losses, samples, plots, checkpoint and summary. Returns the final dev loss (inf if diverged)."""
    m, t = cfg.model, cfg.train
    mix: dict = {}  # model.mix_order: the mixture's weight and its parts' dev losses
    path: dict = {}  # the training path (nplm/fast.py)
    grouped = None  # its training, if done with other runs of its sweep (nplm/vector.py)
    Xtr, Ytr = data.X["train"].to(device), data.Y["train"].to(device)
    Xdev, Ydev = data.X["dev"].to(device), data.Y["dev"].to(device)
    unit = "words" if cfg.data.level == "char" else "lines"
    log.info("data: %d %s (train/dev/test %d/%d/%d), vocab_size %d (derived from the data), "
             "examples train/dev/test %d/%d/%d", sum(map(len, data.words.values())), unit,
             *(len(data.words[s]) for s in SPLITS), data.vocab.size, *(len(data.X[s]) for s in SPLITS))
    if cfg.data.level == "word":  # each line gives its tokens and </s> as targets
        log.info("tokens train/dev/test %d/%d/%d (words and marks, </s> not counted)",
                 *(len(data.X[s]) - len(data.words[s]) for s in SPLITS))
    if m.type == "ngram":
        t0 = time.perf_counter()
        model, optimizer = NGram(m.order, data.vocab.size, m.block_size).fit(Xtr, Ytr), None
        train_time, steps, best_val, best_step = time.perf_counter() - t0, 0, math.inf, 0
        weights_step = 0
        log.info("model: %d-gram, interpolated modified Kneser-Ney, %s counts, fitted in %.2f s",
                 m.order, f"{model.num_params():,}", train_time)
    else:
        # One generator for training, seeded by cfg.seed: parameter draws first, then minibatch
        # indices, the lecture's order. Sampling gets a generator of its own.
        g = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # dropout's masks come from torch's global generator
        model = NPLM(m, data.vocab.size)
        model.init_weights(m.init, g)
        model.to(device)
        optimizer = make_optimizer(model, cfg.optim)
        limit = divergence_limit(model, Xdev, Ydev, data.vocab.size)  # of the untrained model, also when resuming
        if resume:  # the interrupted run's weights, optimiser and generators, as they were at its step
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            g.set_state(resume["rng"]["train"])
            torch.set_rng_state(resume["rng"]["torch"])
            if resume["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        hidden = f"{m.n_layer} x n_hidden {m.n_hidden}" if m.n_hidden else "no hidden layer"
        maxent = (f", hashed n-gram direct connections of orders 1-{m.maxent_order} "
                  f"({model.maxent.weight.numel():,} of the parameters)" if model.maxent is not None else "")
        log.info("model: n_embd %d, block_size %d, %s, norm %s, dropout %g%s%s, init %s, "
                 "%d parameters; %s lr %g (%s); device %s, %d CPU thread(s) (%s)", m.n_embd, m.block_size,
                 hidden, m.norm, m.dropout, ", direct connections" if m.direct else "", maxent, m.init,
                 model.num_params(), cfg.optim.name, cfg.optim.lr, cfg.optim.schedule, device,
                 torch.get_num_threads(), threads.choose(cfg, data.vocab.size)[1])
        if cfg.mode != "train":
            return _tool(cfg, model, optimizer, g, Xtr, Ytr, tracker, out_dir, t_start, device)
        if resume:
            log.info("resuming at step %d of %d from %s", resume["step"], t.steps, out_dir / STATE_NAME)
        grouped = vector.take(out_dir, cfg)  # trained already, with other runs of its sweep (nplm/vector.py)
        try:
            stop.defer(True)
            if grouped is not None:
                best_val, best_step, train_time, best_state, path = _replay(cfg, grouped, model, tracker)
            else:
                best_val, best_step, train_time, best_state, path = _loop(cfg, model, optimizer, g, Xtr, Ytr, Xdev,
                                                                          Ydev, tracker, stop, resume, limit, t_start)
        except Diverged as e:
            return _diverged(cfg, model, *e.args, limit, tracker, t_start)
        finally:
            stop.defer(False)
        steps = weights_step = t.steps
        if t.keep_best and best_state is not None:
            model.load_state_dict(best_state)
            weights_step = best_step
            log.info("keep_best: ending with the weights of step %d (dev loss %.4f)", best_step, best_val)
        if m.mix_order:
            model, mix = _mix(cfg, model, data.vocab.size, Xtr, Ytr, Xdev, Ydev)

    if m.type == "nplm":  # drawn by the plot worker while this process evaluates
        title = f"n_embd {m.n_embd}, block_size {m.block_size}, n_hidden {m.n_hidden}" + (
            f", maxent_order {m.maxent_order}" if m.maxent_order else "")
        xy, how = plots.embedding_2d(model.C)
        drawn = plots.draw([
            ("losses", dict(metrics_csv=str(out_dir / "metrics.csv"), path=str(out_dir / "loss.png"), title=title,
                            level=cfg.data.level)),
            ("embedding", dict(xy=xy.tolist(), how=how, itos=data.vocab.itos, path=str(out_dir / "embedding.png")))])
    t0 = time.perf_counter()
    if grouped is not None and grouped.final and not mix and best_state is None:
        (train_loss, dev_loss), eval_time = grouped.final, grouped.eval_time  # measured by its group
    else:
        train_loss = split_loss(model, Xtr, Ytr, t.eval_chunk)
        dev_loss = split_loss(model, Xdev, Ydev, t.eval_chunk)
        eval_time = time.perf_counter() - t0
    if m.mix_order:  # the network's own best is not comparable with the mixture's loss
        best_val, best_step = dev_loss, steps
    if dev_loss < best_val:
        best_val, best_step = dev_loss, steps
    if m.type == "ngram":  # its one row of metrics: the fitted model
        tracker.log({"step": 0, "train/loss": train_loss, "val/loss": dev_loss, "elapsed": train_time})
    sampler = torch.Generator().manual_seed(cfg.seed)
    samples = label_words(sample_words(model, data.vocab, t.num_samples, sampler), data)
    tracker.write_samples(samples)
    if m.type == "nplm":
        loss_curve, embedding = drawn()
        tracker.log_images({"loss_curve": loss_curve, "embedding": embedding})
    save_checkpoint(out_dir / CKPT_NAME, model=model, optimizer=optimizer, step=steps, weights_step=weights_step,
                    best_val_loss=best_val, cfg=cfg, itos=data.vocab.itos)
    wall = time.perf_counter() - t_start
    if path.get("path") == "vectorized":  # its share of its group's training came before its job
        wall += train_time
    summary = {
        "status": "finished", "mode": "train",
        "train_loss": train_loss, "dev_loss": dev_loss,
        "best_dev_loss": best_val, "best_dev_step": best_step,
        # perplexity: exp(loss in nats per token), the paper's measure at word level
        "train_ppl": perplexity(train_loss), "dev_ppl": perplexity(dev_loss), "best_dev_ppl": perplexity(best_val),
        "level": cfg.data.level,
        "steps": steps, "batch_size": t.batch_size if m.type == "nplm" else None,
        "wall_time_s": wall, "train_time_s": train_time,
        "steps_per_s": steps / train_time if steps and train_time else None,
        # throughput in tokens (characters or words): trained on per second, evaluated per second
        "train_tokens_per_s": steps * t.batch_size / train_time if m.type == "nplm" and steps and train_time else None,
        "eval_tokens_per_s": (len(Xtr) + len(Xdev)) / eval_time,
        "num_params": model.num_params(), "vocab_size": data.vocab.size,
        "seed": cfg.seed, "device": str(device), "threads": torch.get_num_threads(),
        "threads_reason": threads.choose(cfg, data.vocab.size)[1],
        "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
        "resumed_at": (resume["resumed_at"] + [resume["step"]]) if resume else [],
        **mix,
        **path,
        **provenance(),
        "config": dataclasses.asdict(cfg),
    }
    tracker.write_summary(summary)

    tokens = "chars" if cfg.data.level == "char" else "words"
    if m.type == "ngram":
        log.info("done: train loss %.4f | dev loss %.4f | %s counts | %.1f s wall (%.2f s counting)",
                 train_loss, dev_loss, f"{model.num_params():,}", wall, train_time)
    else:
        log.info("done: train loss %.4f | dev loss %.4f (best %.4f at step %d) | perplexity train %.2f, dev %.2f | "
                 "%s parameters | %.1f s wall (%.1f s training, %.0f steps/s, %s %s/s; evaluation %s %s/s)",
                 train_loss, dev_loss, best_val, best_step, summary["train_ppl"], summary["dev_ppl"],
                 f"{model.num_params():,}", wall, train_time, summary["steps_per_s"] or 0,
                 f"{summary['train_tokens_per_s'] or 0:,.0f}", tokens, f"{summary['eval_tokens_per_s']:,.0f}", tokens)
    log.info("saved to %s", out_dir)
    sep = ", " if cfg.data.level == "char" else " | "  # sentences hold commas
    log.info("samples: %s", sep.join(f"{w} ({lab})" if lab != "new" else w for w, lab in samples))
    return dev_loss


def _loop(cfg: Config, model: NPLM, optimizer: Optimizer, g: torch.Generator,
          Xtr: torch.Tensor, Ytr: torch.Tensor, Xdev: torch.Tensor, Ydev: torch.Tensor,
          tracker: Tracker, stop: StopSignals, resume: dict | None, limit: float,
          t_start: float) -> tuple[float, int, float, dict | None, dict]:
    """The training loop: minibatch steps, a metrics row every log_interval, the full dev split
    every eval_interval (of the weights' moving average if train.ema) followed by a save of the
    training state, and on SIGINT/SIGTERM a save and Interrupted. Starts where `resume` left off.
    Steps go through the fast path (nplm/fast.py: compiled, or a CUDA graph) where it covers the
    run, else one at a time through autograd. Returns (best dev loss, its step, training seconds,
    the weights then if train.keep_best, which path ran); raises Diverged when a loss is not finite
    or above `limit`. The progress line's steps/s counts training time only (not evaluations)."""
    o, t, device = cfg.optim, cfg.train, Xtr.device
    best_val, best_step, val_loss, best_state = math.inf, -1, math.nan, None
    # Polyak averaging: evaluate (and end with) a moving average of the weights, buffers included
    ema = EMA(model, t.ema) if t.ema else None
    evaluated = ema.module if ema is not None else model
    train_time, steps_since_log, start = 0.0, 0, 0
    if resume:
        start, train_time, val_loss = resume["step"], resume["train_time"], resume["val_loss"]
        best_val, best_step, best_state = resume["best_val_loss"], resume["best_step"], resume["best_state"]
        if ema is not None:
            ema.load_state_dict(resume["ema"])

    def save_state(step: int) -> None:  # everything the rest of the run depends on, as of `step`
        save_atomic({
            "format": STATE_FORMAT, "step": step, "config": dataclasses.asdict(cfg),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": {"train": g.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
            "best_val_loss": best_val, "best_step": best_step, "best_state": best_state,
            "train_time": train_time, "val_loss": val_loss, "wandb_id": tracker.wandb_id,
            "wall_time": time.perf_counter() - t_start,
            "resumed_at": (resume["resumed_at"] + [resume["step"]]) if resume else [],
        }, tracker.out_dir / STATE_NAME)

    compiled, path = _fast_path(cfg, model, device)
    watch, logged_time, diverging = SpeedWatch(torch.get_num_threads()), train_time, DivergenceWatch(limit)
    t_loop = time.perf_counter()  # building the compiled package is not training
    step = start - 1  # the last step done (0-based)
    while step + 1 < t.steps:
        t0 = time.perf_counter()
        # the next step that logs, evaluates or ends: a compiled call of K steps never runs past it
        boundary = min(t.steps, *((step + 1) // n * n + n for n in (t.log_interval, t.eval_interval)))
        if compiled is not None and boundary - (step + 1) >= compiled.K:
            lrs = lrs_at(step + 1, compiled.K, o, t.steps)
            ix = torch.randint(0, len(Xtr), (compiled.K, t.batch_size), generator=g).to(device)
            losses = compiled(Xtr[ix], Ytr[ix], torch.tensor(lrs, dtype=torch.float32))
            # the sum is finite when every loss is (4x cheaper a call to check); if not, look closer
            finite, n = math.isfinite(losses.sum().item()) or bool(torch.isfinite(losses).all()), compiled.K
            if not finite:  # stop at the first step whose loss was not finite
                n = int(torch.nonzero(~torch.isfinite(losses))[0]) + 1
            step, lr, loss = step + n, lrs[n - 1], losses[n - 1]
        else:
            step, n = step + 1, 1
            lr = lr_at(step, o, t.steps)
            optimizer.set_lr(lr)
            ix = torch.randint(0, len(Xtr), (t.batch_size,), generator=g).to(device)
            _, loss = model(Xtr[ix], Ytr[ix])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                clip_grad_norm(model.parameters(), o.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            finite = device.type != "cpu" or math.isfinite(loss.item())  # cheap on CPU: stop at once
        train_time += time.perf_counter() - t0
        steps_since_log += n
        if not finite:
            raise Diverged(step + 1, loss.item(), train_time, "training loss")

        evaluate = (step + 1) % t.eval_interval == 0 or step == t.steps - 1
        if (step + 1) % t.log_interval == 0 or evaluate:
            rate = steps_since_log / max(train_time - logged_time, 1e-9)
            logged_time, steps_since_log = train_time, 0
            row = {"step": step + 1, "train/loss": loss.item(), "lr": lr, "elapsed": train_time,
                   "steps_per_s": rate}
            if diverging.train(row["train/loss"]):
                raise Diverged(step + 1, row["train/loss"], train_time, "training loss")
            if evaluate:
                val_loss = split_loss(evaluated, Xdev, Ydev, t.eval_chunk)
                row["val/loss"], row["val/ppl"] = val_loss, perplexity(val_loss)
                if diverging.dev(val_loss):
                    raise Diverged(step + 1, val_loss, train_time, "dev loss")
                if val_loss < best_val:
                    best_val, best_step = val_loss, step + 1
                    if t.keep_best:
                        best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            tracker.log(row)
            # time left: at the wall-clock pace of this process so far, evaluations and saves included
            _progress(cfg, row, (time.perf_counter() - t_loop) / (step + 1 - start))
            if (warning := watch.update(rate)) is not None:
                log.warning(warning)
            if evaluate:
                save_state(step + 1)
        if stop.signum is not None:  # SIGINT/SIGTERM came during this step: save (unless just saved), stop
            if not evaluate:
                save_state(step + 1)
            raise Interrupted(stop.signum, step + 1)
    if ema is not None:  # end with the averaged weights, the ones every evaluation measured
        model.load_state_dict(ema.module.state_dict())
    return best_val, best_step, train_time, best_state, path


def _progress(cfg: Config, row: dict, seconds_per_step: float) -> None:
    """The progress line of a metrics row: training steps/s, and the time left at `seconds_per_step`."""
    t, val = cfg.train, row.get("val/loss")
    log.info("step %*d/%d | train/loss %.4f |%s lr %.2e | %.0f steps/s | %s left",
             len(str(t.steps)), row["step"], t.steps, row["train/loss"],
             (f" val/loss {val:.4f}" + (f" (ppl {perplexity(val):.1f})" if cfg.data.level == "word" else "") + " |")
             if val is not None else "", row["lr"], row["steps_per_s"],
             _hms((t.steps - row["step"]) * seconds_per_step))


def _replay(cfg: Config, grouped: vector.Result, model: NPLM,
            tracker: Tracker) -> tuple[float, int, float, dict | None, dict]:
    """A run trained in a group of its sweep (nplm/vector.py): its weights into the model, its
    metrics rows into its record, as _loop would have left them. Raises Diverged where it diverged."""
    model.load_state_dict(grouped.state)
    log.info("training path: vectorised (%s)", grouped.path["path_reason"])
    for row in grouped.rows:
        tracker.log(row)
        _progress(cfg, row, 1 / row["steps_per_s"])
    if grouped.diverged is not None:
        step, loss, what = grouped.diverged
        raise Diverged(step, loss, grouped.train_time, what)
    return grouped.best_val, grouped.best_step, grouped.train_time, grouped.best_state, grouped.path


def _fast_path(cfg: Config, model: NPLM,
               device: torch.device) -> tuple[fast.FastSteps | fast.GraphSteps | None, dict]:
    """The fast path's steps if it covers and pays for this run (nplm/fast.py: a compiled package on
    the CPU, a CUDA graph on a GPU), else None, and what the summary records: which path trains, why,
    and the package's build time; says so."""
    take, why = fast.choose(cfg, device)
    compiled, info = None, {}
    if take and device.type == "cuda":
        try:
            compiled = fast.GraphSteps(fast.parameters(model), fast.STEPS_PER_CALL, cfg.train.batch_size,
                                       cfg.model.block_size)
        except Exception as e:  # capture is not supported here: the plain path does the same
            log.warning("the CUDA graph is not available (%s); training on the plain path", e)
            compiled, why = None, f"capturing the CUDA graph failed: {e}"
    elif take:
        shape = fast.shape_of(cfg, model.vocab_size)
        package = fast.package_path(shape)
        if package.is_file():
            why += ", loaded from the cache"
        else:
            why += ", built once for this shape, then cached"
            log.info("building the compiled package for this shape (about a minute, once): %s", package)
        try:
            compiled = fast.FastSteps(fast.parameters(model), shape, package)
        except Exception as e:  # no C++ compiler, an export or Inductor failure: the plain path does the same
            log.warning("the fast path is not available (%s); training on the plain path", e)
            why = str(e)
        else:
            if compiled.build_time:
                info["build_time_s"] = compiled.build_time
                log.info("built in %.1f s and cached: later runs of this shape load it at once", compiled.build_time)
    if compiled is None:
        info["path"], name = "plain", "plain autograd"
    else:
        info["path"], name = ("cuda_graph", "CUDA graph") if device.type == "cuda" else \
            ("compiled", "compiled fast path")
    info["path_reason"] = why
    log.info("training path: %s (%s)", name, why)
    return compiled, info


def _mix(cfg: Config, model: NPLM, vocab_size: int, Xtr: torch.Tensor, Ytr: torch.Tensor, Xdev: torch.Tensor,
         Ydev: torch.Tensor) -> tuple[Mixture, dict]:
    """model.mix_order: the paper's mixture of the trained network with a Kneser-Ney n-gram built
    from the training split, the network's weight fitted on dev. Returns it and what to record."""
    order = cfg.model.mix_order
    ngram = NGram(order, vocab_size, cfg.model.block_size).fit(Xtr, Ytr)
    weight = fit_weight(model, ngram, Xdev, Ydev, cfg.train.eval_chunk)
    mixture = Mixture(model, ngram, weight)
    nplm_dev = split_loss(model, Xdev, Ydev, cfg.train.eval_chunk)
    ngram_dev = split_loss(ngram, Xdev, Ydev, cfg.train.eval_chunk)
    log.info("mixture: %.3f x network (dev %.4f) + %.3f x Kneser-Ney %d-gram (dev %.4f, %s counts), "
             "weight fitted on dev", weight, nplm_dev, 1 - weight, order, ngram_dev, f"{ngram.num_params():,}")
    return mixture, {"mix_order": order, "mix_weight": weight, "nplm_dev_loss": nplm_dev,
                     "ngram_dev_loss": ngram_dev, "ngram_counts": ngram.num_params()}


def _tool(cfg: Config, model: NPLM, optimizer: Optimizer, g: torch.Generator, Xtr: torch.Tensor,
          Ytr: torch.Tensor, tracker: Tracker, out_dir: Path, t_start: float, device: torch.device) -> float:
    """mode=lr_find or mode=overfit_batch (nplm/tools.py) instead of training: its plot, verdict and
    summary. Returns the lowest smoothed loss (lr_find) or the final batch loss (overfit_batch)."""
    t0 = time.perf_counter()
    if cfg.mode == "lr_find":
        result = lr_find(cfg, model, optimizer, g, Xtr, Ytr, tracker, out_dir)
        value = result["min_smoothed_loss"]
    else:
        result = overfit_batch(cfg, model, optimizer, g, Xtr, Ytr, tracker)
        value = result["overfit_loss"]
    tracker.write_summary({
        "status": "finished", "mode": cfg.mode, **result, "train_loss": None, "dev_loss": None,
        "wall_time_s": time.perf_counter() - t_start, "train_time_s": time.perf_counter() - t0,
        "num_params": model.num_params(), "seed": cfg.seed, "device": str(device),
        "threads": torch.get_num_threads(), **provenance(), "config": dataclasses.asdict(cfg)})
    log.info("saved to %s", out_dir)
    return value


def _diverged(cfg: Config, model: NPLM, step: int, loss: float, train_time: float, what: str, limit: float,
              tracker: Tracker, t_start: float) -> float:
    """A loss that is not finite, or far above where training started, ends the run at once:
    recorded as diverged; sweepers get inf, never NaN."""
    how = "not a number" if math.isnan(loss) else "infinite" if math.isinf(loss) else \
        f"{loss:.4g}, above {limit:.4g} ({FAR:g}x the larger of the uniform guess and the untrained model's loss)"
    log.error("diverged: the %s is %s at step %d; lower optim.lr (now %g) or add warmup", what, how, step,
              cfg.optim.lr)
    tracker.write_summary({
        "status": "diverged", "diverged_step": step, "diverged_loss": loss if math.isfinite(loss) else str(loss),
        "diverged_what": what, "divergence_limit": limit, "error": f"diverged at step {step}: the {what} is {how}",
        "train_loss": None, "dev_loss": None,
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "num_params": model.num_params(), "seed": cfg.seed, **provenance(), "config": dataclasses.asdict(cfg)})
    return math.inf


def provenance() -> dict:
    """What is needed to repeat the run: versions, the code's git commit, the command line."""
    return {
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), **_git_state(), "command": " ".join(sys.argv),
    }


def rss_mb() -> float | None:
    """The resident memory of this process now, in MB (None where /proc is not there)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The most resident memory this process has used so far, in MB (in a sweep: all jobs so far)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _git_state() -> dict:
    repo = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=5)
        commit = proc.stdout.strip() if proc.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
