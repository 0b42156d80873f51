"""The lecture's tools as run modes: the learning-rate finder and the overfit-one-batch check."""
import csv
import math

import pytest
import torch

from conftest import summary, train
from nplm.tools import batch_loss_floor, suggest_lr


def test_batch_loss_floor_is_the_entropy_of_ambiguous_contexts():
    X = torch.tensor([[0, 0], [0, 0], [0, 0], [0, 0], [1, 2], [1, 2]])
    Y = torch.tensor([1, 2, 1, 1, 3, 3])
    # context (0,0): next is 1 three times, 2 once; context (1,2): always 3 (no loss needed)
    expected = -(3 * math.log(3 / 4) + math.log(1 / 4)) / 6
    assert batch_loss_floor(X, Y) == pytest.approx(expected)
    assert batch_loss_floor(X[4:], Y[4:]) == 0.0


def test_suggested_lr_is_half_a_decade_below_the_lowest_loss():
    lrs = [10 ** (-3 + 3 * i / 99) for i in range(100)]
    smoothed = [(math.log10(lr) + 0.5) ** 2 + 2 for lr in lrs]  # lowest at lr 10^-0.5
    suggested, lowest = suggest_lr(lrs, smoothed)
    assert lowest == pytest.approx(10 ** -0.5, rel=0.05)
    assert suggested == pytest.approx(lowest / math.sqrt(10))


def test_overfit_batch_reaches_the_floor_and_never_below(tmp_path):
    run_dir = tmp_path / "of"
    proc = train(run_dir, "mode=overfit_batch", "overfit_batch.steps=300", "optim.lr=0.03", "model.n_hidden=64")
    s = summary(run_dir)
    assert s["status"] == "finished" and s["mode"] == "overfit_batch" and s["val_loss"] is None
    assert s["overfit_passed"] is True
    assert s["overfit_floor"] - 1e-5 <= s["overfit_loss"] <= s["overfit_floor"] + 0.05  # a real floor
    assert "PASS" in proc.stderr + proc.stdout
    assert not (run_dir / "ckpt.pt").exists()  # a check, not a model to keep


def test_overfit_batch_fails_when_the_model_cannot_learn(tmp_path):
    run_dir = tmp_path / "of"
    train(run_dir, "mode=overfit_batch", "overfit_batch.steps=20", "optim.lr=0.00001")
    s = summary(run_dir)
    assert s["overfit_passed"] is False and s["overfit_loss"] > s["overfit_floor"] + 1


def test_lr_find_sweeps_lrs_exponentially_and_stops_when_the_loss_blows_up(tmp_path):
    run_dir = tmp_path / "lr"
    proc = train(run_dir, "mode=lr_find", "lr_find.steps=400", "optim.name=sgd", "optim.schedule=constant",
                 "lr_find.min_lr=0.001", "lr_find.max_lr=1000")
    with open(run_dir / "lr_find.csv") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.001)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) and ratios[0] == pytest.approx(10 ** (6 / 399))
    assert 10 < len(rows) < 400  # SGD at lr 1000 blows up: the test stops early
    s = summary(run_dir)
    assert s["mode"] == "lr_find" and s["lr_find_steps"] == len(rows)
    lowest = min(rows, key=lambda r: r["smoothed"])["lr"]
    assert s["lowest_loss_lr"] == pytest.approx(lowest) and s["suggested_lr"] == pytest.approx(lowest / 10 ** 0.5)
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert f"optim.lr={s['suggested_lr']:.3g}" in proc.stderr + proc.stdout


@pytest.mark.parametrize("overrides, message", [
    (["mode=lr_finder"], "mode='lr_finder' is not known"),
    pytest.param(["model=ngram", "mode=lr_find"], "mode=lr_find trains a neural model", marks=pytest.mark.slow),
    pytest.param(["mode=lr_find", "lr_find.min_lr=1", "lr_find.max_lr=0.1"], "min_lr < max_lr", marks=pytest.mark.slow),
])
def test_bad_tool_settings_are_one_line_errors(tmp_path, overrides, message):
    proc = train(tmp_path / "bad", *overrides, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr + proc.stdout
