"""The lecture's tools, as run modes: a learning-rate finder and an overfit-one-batch check.

    python train.py mode=lr_find          # loss against log10(lr) over exponentially spaced lrs
    python train.py mode=overfit_batch    # can the model fit one fixed minibatch? (a sanity check)

Both build the model, data and optimiser exactly as training would, so they test the recipe the
user is about to run. They write metrics.csv, a plot, and summary.json with `mode` and the verdict.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from nplm.config import Config
from nplm.loop import batch
from nplm.model import NPLM
from nplm.optim import Optimizer, clip_grad_norm, lr_at
from nplm.plots import figure
from nplm.tracking import Tracker, provenance

log = logging.getLogger("nplm")
SMOOTHING = 0.98  # EMA of the minibatch loss: the curve is read from the smoothed values
STOP_FACTOR = 4.0  # stop the range test once the smoothed loss is this many times its minimum


def run_tool(cfg: Config, model: NPLM, optimizer: Optimizer, g: torch.Generator, Xtr: torch.Tensor,
             Ytr: torch.Tensor, tracker: Tracker, t_start: float) -> float:
    """mode=lr_find or mode=overfit_batch instead of training: its plot, verdict and summary.
    Returns the lowest smoothed loss (lr_find) or the final batch loss (overfit_batch)."""
    t0 = time.perf_counter()
    if cfg.mode == "lr_find":
        result = lr_find(cfg, model, optimizer, g, Xtr, Ytr, tracker, tracker.out_dir)
        value = result["min_smoothed_loss"]
    else:
        result = overfit_batch(cfg, model, optimizer, g, Xtr, Ytr, tracker)
        value = result["overfit_loss"]
    tracker.write_summary({
        "status": "finished", "mode": cfg.mode, **result, "train_loss": None, "val_loss": None,
        "wall_time_s": time.perf_counter() - t_start, "train_time_s": time.perf_counter() - t0,
        "num_params": model.num_params(), "seed": cfg.seed, "device": str(Xtr.device),
        "threads": torch.get_num_threads(), **provenance(), "config": dataclasses.asdict(cfg)})
    log.info("saved to %s", tracker.out_dir)
    return value


def lr_find(cfg: Config, model: NPLM, optimizer: Optimizer, g: torch.Generator,
            Xtr: torch.Tensor, Ytr: torch.Tensor, tracker: Tracker, out_dir: Path) -> dict:
    """The lecture's learning-rate range test: one step at each of lr_find.steps learning rates,
    spaced exponentially from min_lr to max_lr, recording the minibatch loss; stops early when the
    loss blows up. Suggests an lr half a decade below the lr of the lowest smoothed loss (see suggest_lr).
    """
    f, device = cfg.lr_find, Xtr.device
    lrs = torch.logspace(math.log10(f.min_lr), math.log10(f.max_lr), f.steps, dtype=torch.float64).tolist()
    points, avg, best = [], 0.0, math.inf
    model.train()
    for step, lr in enumerate(lrs):
        optimizer.set_lr(lr)
        ix = torch.randint(0, len(Xtr), (cfg.train.batch_size,), generator=g).to(device)
        _, loss = model(*batch(Xtr, Ytr, ix))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.item()
        if not math.isfinite(loss):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smoothed = avg / (1 - SMOOTHING ** (step + 1))  # bias-corrected, as in Adam
        points.append((step + 1, lr, loss, smoothed))
        tracker.log({"step": step + 1, "train/loss": loss, "lr": lr, "train/loss_smoothed": smoothed})
        best = min(best, smoothed)
        if smoothed > STOP_FACTOR * best:
            break
    if len(points) < 10:
        raise ValueError(f"the loss blew up within {len(points)} steps of lr_find.min_lr={f.min_lr:g}; "
                         "lower lr_find.min_lr")
    with open(out_dir / "lr_find.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "lr", "loss", "smoothed"])
        writer.writerows(points)
    suggested, lowest = suggest_lr([p[1] for p in points], [p[3] for p in points])
    plot_lr_find(points, suggested, lowest, out_dir / "lr_find.png")
    tracker.log_images({"lr_find": out_dir / "lr_find.png"})
    stopped = "" if len(points) == f.steps else f", stopped at lr {points[-1][1]:.3g} where the loss blew up"
    log.info("lr_find: %d learning rates from %.3g to %.3g%s", len(points), f.min_lr, f.max_lr, stopped)
    log.info("lr_find: the smoothed loss is lowest (%.4f) at lr %.3g; suggested lr %.3g: "
             "python train.py optim.lr=%.3g ...   (plot: %s)", min(p[3] for p in points), lowest, suggested,
             suggested, out_dir / "lr_find.png")
    return {"suggested_lr": suggested, "lowest_loss_lr": lowest, "lr_find_steps": len(points),
            "min_smoothed_loss": min(p[3] for p in points)}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(suggested lr, lr of the lowest smoothed loss). The lowest point of the range test is already
    at the edge of stability (the loss there still reflects the steps before it), so the suggestion
    is half a decade below it: the lecture's choice of 0.1 for a curve whose bottom is at about 0.3."""
    lowest = lrs[min(range(len(smoothed)), key=smoothed.__getitem__)]
    return lowest / math.sqrt(10), lowest


def plot_lr_find(points: list[tuple], suggested: float, lowest: float, path: Path) -> Path:
    _, lrs, losses, smoothed = zip(*points)
    x = [math.log10(v) for v in lrs]
    fig, ax = figure((7, 4.2))
    ax.plot(x, losses, color="tab:blue", alpha=0.3, lw=0.8, label="minibatch loss")
    ax.plot(x, smoothed, color="tab:blue", lw=1.8, label="smoothed")
    ax.axvline(math.log10(suggested), color="tab:green", ls="--", label=f"suggested lr {suggested:.3g}")
    ax.axvline(math.log10(lowest), color="tab:red", ls=":", label=f"lowest loss at lr {lowest:.3g}")
    top = min(max(losses), 1.1 * max(smoothed[0], 1.5 * min(smoothed)))  # the blow-up would flatten the rest
    ax.set_ylim(min(losses) * 0.95, top)
    ax.set_xlabel("log10(learning rate)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate finder (one step per lr, lr rising)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def batch_loss_floor(X: torch.Tensor, Y: torch.Tensor) -> float:
    """The lowest mean cross-entropy any model can reach on this batch: where one context is
    followed by different characters, the best prediction is their frequencies, not a certainty."""
    follow: dict[tuple, list[int]] = defaultdict(list)
    for x, y in zip(X.tolist(), Y.tolist()):
        follow[tuple(x)].append(y)
    total = 0.0
    for ys in follow.values():
        counts = torch.bincount(torch.tensor(ys)).double()
        counts = counts[counts > 0]
        total -= (counts * torch.log(counts / len(ys))).sum().item()
    return total / len(Y)


def overfit_batch(cfg: Config, model: NPLM, optimizer: Optimizer, g: torch.Generator,
                  Xtr: torch.Tensor, Ytr: torch.Tensor, tracker: Tracker) -> dict:
    """Train on one fixed minibatch of train.batch_size examples for overfit_batch.steps steps with
    the configured optimiser and schedule; a correct model and pipeline drive the loss on that batch
    (measured in eval mode, so without dropout) down to its floor. Reports pass or fail."""
    steps, device = cfg.overfit_batch.steps, Xtr.device
    ix = torch.randint(0, len(Xtr), (cfg.train.batch_size,), generator=g).to(device)
    xb, yb = batch(Xtr, Ytr, ix)
    floor = batch_loss_floor(xb.cpu(), yb.cpu())
    interval = max(1, steps // 20)
    model.train()
    for step in range(steps):
        lr = lr_at(step, cfg.optim, steps)
        optimizer.set_lr(lr)
        _, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            clip_grad_norm(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if (step + 1) % interval == 0 or step == steps - 1:
            tracker.log({"step": step + 1, "train/loss": loss.item(), "lr": lr})
            log.info("overfit_batch: step %d/%d | batch loss %.4f | floor %.4f", step + 1, steps, loss.item(), floor)
    model.eval()
    with torch.inference_mode():
        final = model(xb, yb)[1].item()
    model.train()
    passed = math.isfinite(final) and final <= floor + cfg.overfit_batch.tolerance
    verdict = "PASS" if passed else "FAIL"
    log.info("overfit_batch: %s: the loss on one batch of %d examples is %.4f after %d steps; the lowest "
             "possible is %.4f (contexts followed by different characters)%s", verdict, len(yb), final, steps,
             floor, "" if passed else "; check the model, the data and the learning rate, or add steps")
    return {"overfit_passed": passed, "overfit_loss": final, "overfit_floor": floor, "overfit_steps": steps}
