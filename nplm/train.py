"""One run: `run(cfg, out_dir)` trains one model as its config says, records it, and returns the final val loss.

It reads as a story: check (nplm/preflight.py), build (the network, its optimiser and generator; or
the count model), fit (nplm/loop.py; or replay the training its vectorised group did,
nplm/sweep/vector.py; or a tool, nplm/tools.py), record (final losses over the full splits,
samples, plots, checkpoint, summary, through nplm/tracking.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nplm import fast, plots, threads
from nplm.checkpoint import CKPT_NAME, STATE_NAME, TrainState, save_checkpoint
from nplm.config import Config
from nplm.data import SPLITS, Dataset
from nplm.evaluate import FAR, divergence_limit, loss_without_boundary, perplexity, split_loss
from nplm.loop import Diverged, Fit, Setup, fit
from nplm.mixture import fit_mixture
from nplm.model import make_model
from nplm.ngram import NGram
from nplm.optim import EMA, Optimizer, make_optimizer
from nplm.preflight import preflight
from nplm.resume import Interrupted, StopSignals
from nplm.sample import label_words, sample_words
from nplm.tools import run_tool
from nplm.tracking import Tracker, peak_rss_mb, provenance, rss_mb, save_summary

log = logging.getLogger("nplm")


def run(cfg: Config, out_dir: Path, group: str | None = None, name: str | None = None,
        resume: TrainState | None = None, grouped=None) -> float:
    """Train one model as `cfg` says, record it in `out_dir`, and return the final val loss.

    `group` and `name` label the W&B run (a sweep's folder and the job's overrides). `resume` is the
    training state an interrupted run saved in out_dir (nplm/resume.py): training continues from it.
    `grouped` is the training a vectorised group did for this run (nplm/sweep/vector.py's
    GroupResult): it is recorded instead of training. The device and the data are checked first
    (preflight): a run they refuse raises ConfigError or DataError before anything is written. Once
    it starts, if anything raises, summary.json still records the run as failed (or interrupted),
    with the error; SIGINT and SIGTERM during training save the state first.
    """
    t_start = time.perf_counter() - (resume.wall_time if resume else 0.0)  # a resumed run's earlier parts count
    out_dir = Path(out_dir)
    device, data = preflight(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    tracker, failed = None, True
    with StopSignals() as stop:
        try:
            tracker = Tracker(out_dir, cfg.wandb, dataclasses.asdict(cfg), group, name,
                              resume_step=resume.step if resume else None,
                              wandb_id=resume.wandb_id if resume else None)
            val_loss = train(cfg, data, device, tracker, stop, t_start, resume, grouped)
            failed = False
            (out_dir / STATE_NAME).unlink(missing_ok=True)  # finished: ckpt.pt is the record now
            return val_loss
        except BaseException as e:
            _record_failure(cfg, out_dir, tracker, e, t_start)
            raise
        finally:
            if tracker is not None:
                tracker.close(failed=failed)


def train(cfg: Config, data: Dataset, device: torch.device, tracker: Tracker, stop: StopSignals, t_start: float,
          resume: TrainState | None = None, grouped=None) -> float:
    """Build, fit, record. Returns the final val loss (inf if the run diverged; a tool's own figure)."""
    _say_data(cfg, data)
    X = {s: data.X[s].to(device) for s in ("train", "val")}
    Y = {s: data.Y[s].to(device) for s in ("train", "val")}
    if cfg.model.type == "ngram":
        return _record(cfg, data, X, Y, tracker, t_start, _count(cfg, data, X, Y))
    s = build(cfg, data.vocab.size, X, Y, device, resume)
    if cfg.mode != "train":
        return run_tool(cfg, s.model, s.optimizer, s.g, X["train"], Y["train"], tracker, t_start)
    if resume:
        log.info("resuming at step %d of %d from %s", resume.step, cfg.train.steps, tracker.out_dir / STATE_NAME)
    if grouped is None:  # the training path: K steps a call (compiled, a CUDA graph) or autograd
        s.steps, s.path = fast.steps_for(cfg, lambda: fast.parameters(s.model), data.vocab.size, device, setup=s)
    try:
        stop.defer(True)  # a signal now lets the step finish, then the loop saves and stops
        fitted = grouped.replay(cfg, s.model, tracker) if grouped is not None else \
            fit(s, tracker, stop, resume, t_start)
    except Diverged as e:
        return _record_divergence(cfg, s.model, *e.args, s.limit, tracker, t_start)
    finally:
        stop.defer(False)
    steps = fitted.stopped_at or cfg.train.steps
    done = Trained(s.model, s.optimizer, fitted, steps, steps,
                   resumed_at=resume.resumed_at + [resume.step] if resume else [])
    if cfg.train.ends_with_best and fitted.best_state is not None:
        done.model.load_state_dict(fitted.best_state)
        done.weights_step = fitted.best_step
        why = "keep_best" if cfg.train.keep_best else "early stopping" if fitted.stopped_at else \
            f"train.patience={cfg.train.patience} (not reached: the run ended at its length)"
        log.info("%s: ending with the weights of step %d, the best evaluation (val loss %.4f)",
                 why, fitted.best_step, fitted.best_val)
    if cfg.model.mix_order:
        done.model, done.mix = fit_mixture(done.model, cfg.model.mix_order, X, Y, cfg.train.eval_chunk)
    elif grouped is not None and fitted.best_state is None:
        done.measured = grouped.final, grouped.eval_time  # its group measured the final losses
    return _record(cfg, data, X, Y, tracker, t_start, done)


@dataclass
class Trained:
    """A trained model and what its training left, for the record."""
    model: torch.nn.Module  # the network, its mixture with a count model, or the count model
    optimizer: Optimizer | None  # None: a count model
    fit: Fit
    steps: int  # steps trained
    weights_step: int  # the step the weights are from (earlier with train.keep_best)
    mix: dict = field(default_factory=dict)  # model.mix_order: the mixture's weight and its parts' val losses
    resumed_at: list[int] = field(default_factory=list)  # the steps the run was resumed at
    measured: tuple | None = None  # ((train loss, val loss), seconds): the final losses, if its group measured them


def build(cfg: Config, vocab_size: int, X: dict, Y: dict, device: torch.device,
          resume: TrainState | None = None) -> Setup:
    """The network, its optimiser and its training generator as the run's seed draws them (or as the
    interrupted run left them), and the loss above which it has diverged; says what it built."""
    m = cfg.model
    # One generator for training, seeded by cfg.seed: parameter draws first, then minibatch indices,
    # the lecture's order. Sampling gets a generator of its own.
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout's masks come from torch's global generator
    model = make_model(m, vocab_size, g).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    limit = divergence_limit(model, X["val"], Y["val"], vocab_size)  # of the untrained model, also when resuming
    if resume:  # the interrupted run's weights, optimiser and generators, as they were at its step
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        g.set_state(resume.rng["train"])
        torch.set_rng_state(resume.rng["torch"])
        if resume.rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(resume.rng["cuda"])
    hidden = f"{m.n_layer} x n_hidden {m.n_hidden}" if m.n_hidden else "no hidden layer"
    extras = (f", hashed n-gram direct connections of orders 1-{m.maxent_order} "
              f"({model.maxent.weight.numel():,} of the parameters)" if model.maxent is not None else "")
    if m.softmax_cutoffs:
        extras += f", adaptive softmax (cutoffs {list(m.softmax_cutoffs)}, softmax_div {m.softmax_div:g})"
    log.info("model: n_embd %d, block_size %d, %s, norm %s, dropout %g%s%s, init %s, "
             "%d parameters; %s lr %g (%s); device %s, %d CPU thread(s) (%s)", m.n_embd, m.block_size,
             hidden, m.norm, m.dropout, ", direct connections" if m.direct else "", extras, m.init,
             model.num_params(), cfg.optim.name, cfg.optim.lr, cfg.optim.schedule, device,
             torch.get_num_threads(), threads.choose(cfg, vocab_size)[1])
    ema = EMA(model, cfg.train.ema) if cfg.train.ema else None  # Polyak averaging (its state: loop.fit's resume)
    return Setup(cfg, model, optimizer, g, X, Y, limit, ema=ema)


def _count(cfg: Config, data: Dataset, X: dict, Y: dict) -> Trained:
    """model=ngram: the Kneser-Ney count model of the training split ("training" is counting)."""
    m, t0 = cfg.model, time.perf_counter()
    model = NGram(m.order, data.vocab.size, m.block_size).fit(X["train"], Y["train"])
    fitted = Fit(best_step=0, train_time=time.perf_counter() - t0)
    log.info("model: %d-gram, interpolated modified Kneser-Ney, %s counts, fitted in %.2f s",
             m.order, f"{model.num_params():,}", fitted.train_time)
    return Trained(model, None, fitted, steps=0, weights_step=0)


def _record(cfg: Config, data: Dataset, X: dict, Y: dict, tracker: Tracker, t_start: float, done: Trained) -> float:
    """The record of a trained model: final losses over the full splits (X, Y: on the run's device),
    samples, plots, checkpoint and summary; says so. Returns the final val loss."""
    out_dir, model, fitted = tracker.out_dir, done.model, done.fit
    network = cfg.model.type == "nplm"
    drawn = _draw(cfg, model, data, out_dir) if network else None  # by the plot worker, while this process evaluates
    t0 = time.perf_counter()
    if done.measured is not None and done.measured[0]:
        (train_loss, val_loss), eval_time = done.measured
    else:  # long at word level (minutes for a million words and a count model): said first
        log.info("final losses: evaluating the %s on the whole train and val splits (%s + %s examples)",
                 "mixture" if done.mix else "network" if network else "count model",
                 f"{len(Y['train']):,}", f"{len(Y['val']):,}")
        train_loss = split_loss(model, X["train"], Y["train"], cfg.train.eval_chunk)
        val_loss = split_loss(model, X["val"], Y["val"], cfg.train.eval_chunk)
        eval_time = time.perf_counter() - t0
    if done.mix or val_loss < fitted.best_val:  # a mixture's loss is not comparable with its network's best
        fitted.best_val, fitted.best_step = val_loss, done.steps
    if not network:  # its one row of metrics: the fitted model
        tracker.log({"step": 0, "train/loss": train_loss, "val/loss": val_loss, "elapsed": fitted.train_time})
    samples = label_words(sample_words(model, data.vocab, cfg.train.num_samples,
                                       torch.Generator().manual_seed(cfg.seed)), data)
    tracker.write_samples(samples)
    if drawn is not None:
        loss_curve, embedding = drawn()
        tracker.log_images({"loss_curve": loss_curve, "embedding": embedding})
    save_checkpoint(out_dir / CKPT_NAME, model=model, optimizer=done.optimizer, step=done.steps,
                    weights_step=done.weights_step, best_val_loss=fitted.best_val, cfg=cfg, itos=data.vocab.itos)
    wall = time.perf_counter() - t_start
    if fitted.path.get("path") == "vectorized":  # its share of its group's training came before its job
        wall += fitted.train_time
    summary = _summary(cfg, data, done, train_loss, val_loss, wall, eval_time, X["train"].device)
    if cfg.data.level == "word":  # papers differ on whether the end of a line counts: both figures
        loss, share = loss_without_boundary(model, X["val"], Y["val"], cfg.train.eval_chunk)
        summary.update(val_loss_without_boundary=loss, val_ppl_without_boundary=perplexity(loss), boundary_share=share,
                       ppl_note="val_ppl counts the prediction of each line's </s>; "
                                "val_ppl_without_boundary leaves those out")
    tracker.write_summary(summary)
    _say_done(cfg, summary, out_dir, samples)
    return val_loss


def _summary(cfg: Config, data: Dataset, done: Trained, train_loss: float, val_loss: float, wall: float,
             eval_time: float, device: torch.device) -> dict:
    """summary.json of a finished run: its results, speed, machine, provenance and config."""
    t, fitted, steps = cfg.train, done.fit, done.steps
    network, train_time = cfg.model.type == "nplm", fitted.train_time
    return {
        "status": "finished", "mode": "train",
        "train_loss": train_loss, "val_loss": val_loss,
        "best_val_loss": fitted.best_val, "best_val_step": fitted.best_step,
        # perplexity: exp(loss in nats per token), the paper's measure at word level
        "train_ppl": perplexity(train_loss), "val_ppl": perplexity(val_loss),
        "best_val_ppl": perplexity(fitted.best_val),
        "level": cfg.data.level,
        "steps": steps, "batch_size": t.batch_size if network else None,
        "epochs": steps * t.batch_size / len(data.Y["train"]) if network else None,  # passes over the train split
        "wall_time_s": wall, "train_time_s": train_time,
        "steps_per_s": steps / train_time if steps and train_time else None,
        # throughput in tokens (characters or words): trained on per second, evaluated per second
        "train_tokens_per_s": steps * t.batch_size / train_time if network and steps and train_time else None,
        "eval_tokens_per_s": (len(data.X["train"]) + len(data.X["val"])) / eval_time,
        "num_params": done.model.num_params(), "vocab_size": data.vocab.size,
        "seed": cfg.seed, "device": str(device), "threads": torch.get_num_threads(),
        "threads_reason": threads.choose(cfg, data.vocab.size)[1],
        "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
        "resumed_at": done.resumed_at, "stopped_early_at": fitted.stopped_at,
        **done.mix,
        **fitted.path,
        **provenance(),
        "config": dataclasses.asdict(cfg),
    }


def _draw(cfg: Config, model, data: Dataset, out_dir: Path):
    """Start drawing the loss curve and the embedding (nplm/plots.py); returns what waits for them."""
    m = cfg.model
    title = f"n_embd {m.n_embd}, block_size {m.block_size}, n_hidden {m.n_hidden}" + (
        f", maxent_order {m.maxent_order}" if m.maxent_order else "")
    xy, how = plots.embedding_2d(model.C)
    return plots.draw([
        ("losses", dict(metrics_csv=str(out_dir / "metrics.csv"), path=str(out_dir / "loss.png"), title=title,
                        level=cfg.data.level)),
        ("embedding", dict(xy=xy.tolist(), how=how, itos=data.vocab.itos, path=str(out_dir / "embedding.png")))])


def _say_data(cfg: Config, data: Dataset) -> None:
    unit = "words" if cfg.data.level == "char" else "lines"
    log.info("data: %d %s (train/val/test %d/%d/%d), vocab_size %d (derived from the data), "
             "examples train/val/test %d/%d/%d", sum(map(len, data.words.values())), unit,
             *(len(data.words[s]) for s in SPLITS), data.vocab.size, *(len(data.X[s]) for s in SPLITS))
    if cfg.data.level == "word":  # each line gives its tokens and </s> as targets
        log.info("tokens train/val/test %d/%d/%d (words and marks, </s> not counted)",
                 *(len(data.X[s]) - len(data.words[s]) for s in SPLITS))


def _say_done(cfg: Config, summary: dict, out_dir: Path, samples: list[tuple[str, str]]) -> None:
    s, tokens = summary, "chars" if cfg.data.level == "char" else "words"
    if cfg.model.type == "ngram":
        log.info("done: train loss %.4f | val loss %.4f | %s counts | %.1f s wall (%.2f s counting)",
                 s["train_loss"], s["val_loss"], f"{s['num_params']:,}", s["wall_time_s"], s["train_time_s"])
    else:
        log.info("done: train loss %.4f | val loss %.4f (best %.4f at step %d) | perplexity train %.2f, val %.2f | "
                 "%s parameters | %.1f s wall (%.1f s training, %.3g epochs, %.0f steps/s, %s %s/s; evaluation %s %s/s)",
                 s["train_loss"], s["val_loss"], s["best_val_loss"], s["best_val_step"], s["train_ppl"],
                 s["val_ppl"], f"{s['num_params']:,}", s["wall_time_s"], s["train_time_s"], s["epochs"],
                 s["steps_per_s"] or 0,
                 f"{s['train_tokens_per_s'] or 0:,.0f}", tokens, f"{s['eval_tokens_per_s']:,.0f}", tokens)
    if "val_ppl_without_boundary" in s:
        log.info("val perplexity %.2f counting each line's </s> (%.1f%% of the predictions), %.2f without them",
                 s["val_ppl"], 100 * s["boundary_share"], s["val_ppl_without_boundary"])
    log.info("saved to %s", out_dir)
    sep = ", " if cfg.data.level == "char" else " | "  # sentences hold commas
    shown = ((w or "(empty)", lab) for w, lab in samples)  # a model can end a line at its first step
    if samples:  # none with train.num_samples=0
        log.info("samples: %s", sep.join(f"{w} ({lab})" if lab != "new" else w for w, lab in shown))


def _record_divergence(cfg: Config, model, step: int, loss: float, train_time: float, what: str, limit: float,
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
        "train_loss": None, "val_loss": None, "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time, "num_params": model.num_params(), "seed": cfg.seed, **provenance(),
        "config": dataclasses.asdict(cfg)})
    return math.inf


def _record_failure(cfg: Config, out_dir: Path, tracker: Tracker | None, e: BaseException, t_start: float) -> None:
    """summary.json of a run that raised: failed, or interrupted (with the command that resumes it)."""
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
