"""The training loop (nplm/loop.py): when it logs, evaluates and saves (Cadence), and its K-step calls.

The fast path's K-step calls are tested here without compiling anything: fast.GraphSteps with
capture=False runs the same K steps of sgd_steps eagerly (the CPU path of a vectorised group), so
the loop's boundary logic (a call of K steps never runs past a log, an evaluation or the end) is
checked in the default suite; the compiled package itself is built in the slow tests (test_fast.py).
"""
import dataclasses

import pytest
import torch

from conftest import compose_cfg
from nplm import fast
from nplm.config import to_config
from nplm.data import load_data
from nplm.loop import Cadence, fit
from nplm.resume import StopSignals
from nplm.tracking import Tracker
from nplm.train import build


def test_cadence_logs_evaluates_and_stops_calls_where_it_should():
    c = Cadence(steps=130, log_interval=25, eval_interval=40)
    assert [d for d in range(1, 131) if c.logs(d)] == [25, 40, 50, 75, 80, 100, 120, 125, 130]
    assert [d for d in range(1, 131) if c.evaluates(d)] == [40, 80, 120, 130]
    # from each step count, the next one at which something happens: a call never runs past it
    stops = {d: c.next_stop(d) for d in range(0, 130)}
    assert stops[0] == 25 and stops[24] == 25 and stops[25] == 40 and stops[40] == 50 and stops[125] == 130
    for d, stop in stops.items():
        assert d < stop <= 130 and (c.logs(stop) or stop == 130)
        assert not any(c.logs(x) for x in range(d + 1, stop))


class CountingSteps(fast.GraphSteps):
    """The eager K-step function, counting the calls the loop makes of it (where each began)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.starts = []

    def __call__(self, X, Y, lrs):
        self.starts.append(len(X))
        return super().__call__(X, Y, lrs)


def trained(tmp_path, name, k_steps: bool):
    cfg = to_config(compose_cfg(["experiment=lecture", "train.steps=130", "train.log_interval=25",
                                 "train.eval_interval=40", "optim.decay_steps=[100]", "model.init=scaled",
                                 "wandb.mode=disabled"]))
    data = load_data(cfg.data, cfg.model.block_size)
    X = {s: data.X[s] for s in ("train", "val")}
    Y = {s: data.Y[s] for s in ("train", "val")}
    s = build(cfg, data.vocab.size, X, Y, torch.device("cpu"))
    if k_steps:
        s.steps = CountingSteps(fast.parameters(s.model), fast.STEPS_PER_CALL, cfg.train.batch_size,
                                cfg.model.block_size, capture=False)
    out = tmp_path / name
    out.mkdir()
    tracker = Tracker(out, cfg.wandb, dataclasses.asdict(cfg))
    with StopSignals() as stop:
        result = fit(s, tracker, stop, None, 0.0)
    tracker.close()
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    return result, [row.split(",") for row in rows], s


def test_k_step_calls_stop_at_every_log_and_evaluation_and_match_the_plain_path(tmp_path):
    plain, plain_rows, _ = trained(tmp_path, "plain", k_steps=False)
    k, k_rows, s = trained(tmp_path, "k", k_steps=True)
    # K = 20: a call of K steps only where the next log or evaluation is at least K steps away:
    # steps 1-20 (stop at 25), 51-70 (75), 81-100 (100), 101-120 (120); one at a time elsewhere
    assert s.steps.starts == [20, 20, 20, 20]
    assert [r[0] for r in k_rows] == [r[0] for r in plain_rows] == ["25", "40", "50", "75", "80", "100", "120",
                                                                      "125", "130"]
    # the same math on the same minibatches (scaled init: a calm start that does not amplify rounding)
    for a, b in zip(k_rows, plain_rows):
        assert float(a[1]) == pytest.approx(float(b[1]), rel=1e-4)  # train/loss
        assert (a[2] == "") == (b[2] == "") and (a[2] == "" or float(a[2]) == pytest.approx(float(b[2]), rel=1e-4))
    assert k.best_step == plain.best_step
    assert k.best_val == pytest.approx(plain.best_val, rel=1e-4)
