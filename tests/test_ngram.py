"""The Kneser-Ney count baseline: a proper distribution, the reference numbers, and a real run."""
import math

import pytest
import torch

from conftest import ROOT, TINY, run_cmd, summary, train
from nplm.data import load_dataset
from nplm.ngram import NGram


def fitted(order):
    data = load_dataset(None, 0.8, 0.1, 42, max(1, order - 1))
    return NGram(order, 27, max(1, order - 1)).fit(data.X["train"], data.Y["train"]), data


@pytest.mark.parametrize("order", [1, 2, 3, 7])
def test_distribution_sums_to_one_everywhere(order):
    model, data = fitted(order)
    logits, _ = model(data.X["val"][:300])
    assert torch.allclose(logits.double().exp().sum(1), torch.ones(300, dtype=torch.float64), atol=1e-5)
    unseen = torch.tensor([[26] * max(1, order - 1)])  # 'zzz...' never occurs: backs off, still sums to 1
    assert model(unseen)[0].double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_unigram_is_the_continuation_free_frequency():
    model, data = fitted(1)
    assert model.num_params() == 27
    assert -model.log_prob(data.X["val"], data.Y["val"]).mean().item() < math.log(27)


@pytest.mark.parametrize("order, val, reference", [(4, 2.0560, 2.0607), (5, 1.9832, 1.9923), (6, 1.9740, 1.9835)])
def test_val_loss_matches_reference(order, val, reference):
    """Modified KN (three discounts) lands a little below docs/reference.md's interpolated KN numbers."""
    model, data = fitted(order)
    loss = -model.log_prob(data.X["val"], data.Y["val"]).mean().item()
    assert loss == pytest.approx(val, abs=1e-4)
    assert reference - 0.015 < loss <= reference


@pytest.mark.slow  # ~10 s: keeps the default suite near its time (CI runs it)
def test_ngram_run_is_saved_sampleable_and_evaluable(tmp_path):
    run_dir = tmp_path / "r"
    train(run_dir, "model=ngram", "model.order=5")
    s = summary(run_dir)
    assert s["status"] == "finished" and s["val_loss"] == pytest.approx(1.9832, abs=1e-4)
    assert s["config"]["model"]["block_size"] == 4 and s["num_params"] == 73580
    assert len((run_dir / "samples.tsv").read_text().splitlines()) == 6
    out = run_cmd(["scripts/evaluate.py", run_dir, "split=val"]).stdout
    assert out.startswith("val loss 1.9832")
    assert len(run_cmd(["scripts/sample.py", run_dir, "n=4"]).stdout.splitlines()) == 4


@pytest.mark.slow
def test_ngram_orders_sweep(tmp_path):
    sweep = tmp_path / "s"
    run_cmd([ROOT / "train.py", "-m", *TINY, "model=ngram", "model.order=2,3", "wandb.mode=disabled",
             f"hydra.sweep.dir={sweep}"])
    devs = [summary(sweep / j)["val_loss"] for j in "01"]
    assert devs[0] > devs[1]  # a trigram beats a bigram
    proc = train(tmp_path / "bad", "model=ngram", "model.block_size=3", check=False)
    assert proc.returncode == 2 and "model.block_size=3 is too short for model.order=5" in proc.stderr + proc.stdout
