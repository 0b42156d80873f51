"""The paper's mixture of the network with a Kneser-Ney n-gram (model.mix_order)."""

import pytest
import torch

from conftest import ROOT, run_cmd, summary, train
from nplm.checkpoint import load_model
from nplm.data import load_dataset
from nplm.evaluate import split_loss
from nplm.mixture import Mixture, best_weight, fit_mixture, part_log_probs
from nplm.ngram import NGram


def test_weight_maximises_the_val_likelihood():
    data = load_dataset(None, 0.8, 0.1, 42, 3)
    X, Y, Xd, Yd = data.X["train"], data.Y["train"], data.X["val"], data.Y["val"]
    bigram, trigram = NGram(2, 27, 3).fit(X, Y), NGram(3, 27, 3).fit(X, Y)

    class AsNetwork(torch.nn.Module):  # a count model in the network's place: logits = log-probs
        block_size, vocab_size = 3, 27

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx, targets=None):
            return self.inner(idx)[0], None

    net = AsNetwork(bigram)
    w = best_weight(*part_log_probs(net, trigram, Xd, Yd))
    loss = lambda v: split_loss(Mixture(net, trigram, v), Xd, Yd)  # noqa: E731
    grid = {v: loss(v) for v in (0.0, 0.1, 0.3, 1.0)}
    assert w < 0.01  # the trigram already holds the bigram (interpolated): next to no share for it
    assert loss(w) <= min(grid.values()) + 1e-9
    w = best_weight(*part_log_probs(AsNetwork(trigram), bigram, Xd, Yd))  # and the other way round
    assert w > 0.99


def test_weight_of_a_real_network_is_the_likelihood_maximum():
    from nplm.config import ModelConfig
    from nplm.model import NPLM
    data = load_dataset(None, 0.8, 0.1, 42, 3)
    X, Y, Xd, Yd = data.X["train"], data.Y["train"], data.X["val"], data.Y["val"]
    g = torch.Generator().manual_seed(0)
    net = NPLM(ModelConfig(type="nplm", block_size=3, n_embd=8, n_hidden=64), 27)
    net.init_weights("scaled", g)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    for _ in range(300):
        ix = torch.randint(0, len(X), (256,), generator=g)
        loss = net(X[ix], Y[ix])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    mixture, info = fit_mixture(net, 3, data.X, data.Y, 4096)  # what a run with model.mix_order=3 does
    w, trigram = info["mix_weight"], mixture.ngram
    assert mixture.weight.item() == w == best_weight(*part_log_probs(net, trigram, Xd, Yd))
    mixed = lambda v: split_loss(Mixture(net, trigram, v), Xd, Yd)  # noqa: E731
    assert info["nplm_val_loss"] == pytest.approx(mixed(1.0)) and info["ngram_val_loss"] == pytest.approx(mixed(0.0))
    assert 0.05 < w < 0.95
    assert mixed(w) < min(mixed(0.0), mixed(1.0)) - 0.005  # the parts err differently: mixing helps
    assert mixed(w) <= min(mixed(w - 0.02), mixed(w + 0.02))


@pytest.mark.slow  # ~10 s: keeps the default suite near its time (CI runs it)
def test_mixture_run_is_no_worse_than_either_part_and_is_what_gets_saved(tmp_path):
    run_dir = tmp_path / "mix"
    train(run_dir, "model.mix_order=4")
    s = summary(run_dir)
    assert s["mix_order"] == 4 and 0 <= s["mix_weight"] <= 1 and s["ngram_counts"] > 0
    assert s["val_loss"] <= min(s["nplm_val_loss"], s["ngram_val_loss"]) + 1e-6
    assert s["best_val_loss"] == s["val_loss"]
    model, cfg, _ = load_model(run_dir)
    assert isinstance(model, Mixture) and model.weight.item() == pytest.approx(s["mix_weight"])
    proc = run_cmd([ROOT / "scripts" / "evaluate.py", run_dir, "split=val"])
    assert f"{s['val_loss']:.4f}" in proc.stdout
    # and each part on its own, as the run measured them
    assert f"network alone: val loss {s['nplm_val_loss']:.4f}" in proc.stdout
    assert f"Kneser-Ney 4-gram alone: val loss {s['ngram_val_loss']:.4f}" in proc.stdout
    proc = run_cmd([ROOT / "scripts" / "sample.py", run_dir, "n=3", "seed=1"])
    assert len(proc.stdout.strip().splitlines()) == 3


def test_mixture_order_beyond_the_context_is_a_clear_error(tmp_path):
    proc = train(tmp_path / "bad", "model.mix_order=7", check=False)  # TINY's block_size is 5
    assert proc.returncode == 2
    assert "model.mix_order=7 must be 0 (off) or an n-gram order from 1 to 6" in proc.stderr + proc.stdout
