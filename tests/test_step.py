"""The compiled step of any recipe (nplm/step.py), against the plain path it stands in for.

The step function is checked eagerly (the arithmetic the package compiles) against the plain path's
steps for every feature a shipped recipe uses; then one package is built and trained through the
real command, next to the plain path, and loaded from the cache the second time."""
import pytest
import torch

from conftest import ROOT, TINY, compose_cfg, run_cmd, summary
from nplm import step as S
from nplm.config import to_config
from nplm.fast import CACHE
from nplm.data import load_data
from nplm.loop import plain_step
from nplm.model import first_rows, kept
from nplm.optim import lrs_at
from nplm.train import build

K = 3
# every feature of conf/experiment/ and the default config (dropout apart: its masks are drawn in
# another order, test_dropout_masks_read_from_the_draws)
RECIPES = {
    "default": [],
    "best (AdamW on hashed n-gram rows, LayerNorm, EMA)": ["experiment=best", "model.dropout=0"],
    "bengio2003 (SGD, weight decay on features, inverse schedule)": ["experiment=bengio2003", "data=shakespeare",
                                                                     "model.mix_order=0"],
    "words (EMA, weight decay)": ["experiment=words", "data=shakespeare", "model.dropout=0"],
    "words_large (adaptive softmax)": ["experiment=words_large", "data=shakespeare", "model.dropout=0",
                                       "model.word_dropout=0", "model.mix_order=0", "model.softmax_cutoffs=[500,2000]"],
    "batchnorm, clipping, two layers, direct connections": ["model.norm=batchnorm", "optim.grad_clip=0.5",
                                                            "train.ema=0.9", "model.n_layer=2", "model.direct=true"],
    "AdamW with strong weight decay (2% a step)": ["optim.weight_decay=10", "optim.warmup_steps=0",
                                                   "optim.lr=0.002"],
    "SGD with momentum and weight decay": ["optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01",
                                           "optim.lr=0.1"],
    "SGD on hashed n-gram rows, clipped": ["optim.name=sgd", "model.maxent_order=3", "optim.lr=0.1",
                                           "optim.grad_clip=0.1"],
}


def setups(overrides):
    cfg = to_config(compose_cfg([*overrides, "wandb.mode=disabled", "train.steps=100", "device=cpu"]))
    data = load_data(cfg.data, cfg.model.block_size)
    X = {s: data.X[s] for s in ("train", "val")}
    Y = {s: data.Y[s] for s in ("train", "val")}
    return cfg, X, Y, [build(cfg, data.vocab.size, X, Y, torch.device("cpu")) for _ in range(2)]


@pytest.mark.parametrize("overrides", RECIPES.values(), ids=RECIPES.keys())
def test_the_step_function_is_the_plain_paths_step(overrides):
    """K steps of make_fn (run eagerly: what the package compiles; an adaptive softmax's clusters for
    the rows capacities() gives) leave the model, the optimiser's state and the moving average where K
    steps of the plain path leave them, to float rounding."""
    steps_agree(overrides, every_row=False)


def test_an_adaptive_softmax_over_every_row_is_the_plain_paths_step():
    """The function a minibatch runs eagerly when a cluster has more targets than the package computes
    it for (RecipeSteps' every_row): every cluster for every row, masked."""
    steps_agree(RECIPES["words_large (adaptive softmax)"], every_row=True)


def test_capacities_hold_a_clusters_rows_and_no_more():
    """capacities() leaves a margin over a cluster's mean count; fits() tells a minibatch with more
    targets in a cluster apart; first_rows gathers a cluster's rows in order."""
    cfg, X, Y, (s, _) = setups(RECIPES["words_large (adaptive softmax)"])
    B, edges = cfg.train.batch_size, s.model.adaptive.cutoffs
    caps = S.capacities(s.model, Y["train"], B)
    for (lo, hi), cap in zip(zip(edges, edges[1:]), caps):
        mean = B * ((Y["train"] >= lo) & (Y["train"] < hi)).float().mean().item()
        assert mean + 20 < cap < B and cap % 8 == 0, (mean, cap)
    one = S.Step(cfg, s.model, s.optimizer, s.ema, caps)
    ix = torch.randint(0, len(X["train"]), (4, B), generator=torch.Generator().manual_seed(0))
    assert one.fits(Y["train"][ix])
    crowded = Y["train"][ix].clone()
    crowded[2, :caps[1] + 1] = edges[1]  # one target too many in the last cluster, [edges[1], vocab_size)
    assert not one.fits(crowded)
    rows, used = first_rows(torch.tensor([False, True, False, True, True]), 4)
    assert rows.tolist()[:3] == [1, 3, 4] and used.tolist() == [True, True, True, False]


def steps_agree(overrides, every_row):
    cfg, X, Y, (plain, compiled) = setups(overrides)
    lrs = lrs_at(0, K, cfg.optim, cfg.train.steps)
    ix = torch.randint(0, len(X["train"]), (K, cfg.train.batch_size), generator=torch.Generator().manual_seed(5))
    want = []
    for k in range(K):
        want.append(plain_step(plain, X["train"][ix[k]], Y["train"][ix[k]], lrs[k]).item())
    caps = None if every_row else S.capacities(compiled.model, Y["train"], cfg.train.batch_size)
    one = S.Step(cfg, compiled.model, compiled.optimizer, compiled.ema, caps)
    assert one.fits(Y["train"][ix])
    (got,) = S.make_fn(cfg, compiled.model, one.layout, caps)(*one.args(X["train"][ix], Y["train"][ix], lrs))
    one.after(K)
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    pairs = [(plain.model, compiled.model)] + ([(plain.ema.module, compiled.ema.module)] if plain.ema else [])
    for a, b in pairs:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=name)
    for p, q in zip(plain.model.parameters(), compiled.model.parameters()):  # the optimiser's state
        for key, value in plain.optimizer.state.get(p, {}).items():
            torch.testing.assert_close(compiled.optimizer.state[q][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_dropout_masks_read_from_the_draws():
    """The compiled step's dropout: a unit is kept where its uniform draw is >= p, scaled by 1/(1-p):
    all kept when every draw is 1 - eps (the network without dropout), none when every draw is 0."""
    cfg, X, Y, (s, _) = setups(["model.dropout=0.3", "model.word_dropout=0.2", "model.n_layer=2"])
    model, idx, y = s.model, X["train"][:64], Y["train"][:64]
    H, T = cfg.model.n_hidden, cfg.model.block_size
    model.eval()
    without = torch.nn.functional.cross_entropy(model(idx)[0], y)
    model.train()
    ones = {"hidden": [torch.full((64, H), 0.999)] * 2, "word": torch.full((64, T, 1), 0.999)}
    # kept units scaled by 1/(1-p): the word features by 1/0.8, hidden units by 1/0.7
    assert torch.equal(kept(torch.tensor([0.1, 0.3, 0.5]), 0.3), torch.tensor([0.0, 1 / 0.7, 1 / 0.7]))
    all_kept = model.step_loss(idx, y, ones)
    assert all_kept.item() != pytest.approx(without.item())  # scaled up, as dropout does in training
    zeros = {"hidden": [torch.zeros(64, H)] * 2, "word": torch.zeros(64, T, 1)}
    none_kept = model.step_loss(idx, y, zeros)  # every unit dropped: the output sees its bias only
    torch.testing.assert_close(none_kept, torch.nn.functional.cross_entropy(
        model.out.bias.expand(64, -1), y))


def test_ngram_rows_gradient_is_the_coalesced_sparse_one():
    """_coalesce sums the gradient of each repeated table row, as the plain path's sparse gradient."""
    rows = torch.tensor([[5, 9], [5, 2], [7, 9], [5, 5]])
    grad = torch.randn(4, 3)
    distinct, summed, valid = S._coalesce(rows, grad)
    want = torch.sparse_coo_tensor(rows.reshape(1, -1), grad[:, None, :].expand(4, 2, 3).reshape(8, 3),
                                   (10, 3), check_invariants=True).coalesce()
    n = int(valid.sum())
    assert torch.equal(distinct[:n], want.indices()[0]) and (distinct[n:] == distinct[0]).all()
    torch.testing.assert_close(summed[:n], want.values())
    assert (summed[n:] == 0).all()


COMPILED = [*TINY, "train.steps=2000", "train.eval_interval=1000", "train.log_interval=500", "optim.name=adamw",
            "train.ema=0.99", "model.norm=layernorm", "model.n_layer=2", "model.dropout=0.1",
            "model.maxent_order=2", "optim.grad_clip=1.0", "optim.weight_decay=0.1", "train.batch_size=64"]


def test_a_recipe_trains_compiled_as_on_the_plain_path_and_builds_once(tmp_path):
    """One package for a recipe with most features at once, trained through the command with
    train.fast=on (the default: auto, from 2,000 steps) next to train.fast=off: both learn, and end
    within the spread that dropout's masks (drawn in another order) give; a second run of the same
    shape, at another lr, loads the package from the cache."""
    runs = {}
    for name, extra in (("compiled", []), ("plain", ["train.fast=off"]), ("again", ["optim.lr=0.005"])):
        run_cmd([ROOT / "train.py", *COMPILED, *extra, f"hydra.run.dir={tmp_path / name}"], timeout=600)
        runs[name] = summary(tmp_path / name)
    c, p, again = runs["compiled"], runs["plain"], runs["again"]
    assert c["path"] == again["path"] == "compiled" and p["path"] == "plain", (c["path_reason"], p["path_reason"])
    assert c["build_time_s"] > 0 and "built once" in c["path_reason"]
    assert "build_time_s" not in again and "loaded from the cache" in again["path_reason"]
    assert not list(CACHE.rglob(".*.lock"))  # each build's lock file is removed once its package is there
    assert c["val_loss"] < 2.6 and p["val_loss"] < 2.6  # the uniform guess is ln 27 = 3.30
    assert abs(c["val_loss"] - p["val_loss"]) < 0.03, (c["val_loss"], p["val_loss"])
    # Reproducible mode: the compiled step's numbers are the same on any x86-64 CPU with AVX2 (its matrix
    # products are Inductor's AVX2 code, not MKL's: docs/reproducibility.md), so they are written here,
    # as measured on an AMD EPYC (2026-12-07); CI runs on whatever CPU it gets.
    rows = (tmp_path / "compiled" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == COMPILED_TRAIN_LOSSES, rows
    assert c["val_loss"] == COMPILED_VAL_LOSS


# COMPILED's training losses at steps 500, 1000, 1500, 2000 and its final val loss, in reproducible mode
COMPILED_TRAIN_LOSSES = ["2.2964863777160645", "1.9654350280761719", "2.1474270820617676", "2.0264744758605957"]
COMPILED_VAL_LOSS = 2.1579007376269037


def test_dropout_draws_are_a_seeded_hash_uniform_in_0_1():
    """step.uniform: the same seed and stream give the same draws, another seed or stream others;
    they are uniform (mean 1/2, each tenth of [0, 1) about a tenth of them) and uncorrelated with
    their neighbours, so a dropout mask keeps 1 - p of the units."""
    seed = torch.tensor([12345], dtype=torch.int32)
    a = S.uniform(seed, 3, (256, 384))
    assert torch.equal(a, S.uniform(seed, 3, (256, 384))) and a.dtype == torch.float32
    assert not torch.equal(a, S.uniform(seed, 4, (256, 384))) and not torch.equal(a, S.uniform(seed + 1, 3, (256, 384)))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.005
    tenths = torch.histc(a, bins=10, min=0, max=1) / a.numel()
    assert (tenths - 0.1).abs().max() < 0.005, tenths
    flat = a.reshape(-1) - 0.5
    assert abs((flat[1:] * flat[:-1]).mean().item()) < 0.002  # neighbours: no correlation (variance 1/12)
    assert abs(kept(a, 0.25).ne(0).float().mean().item() - 0.75) < 0.005


@pytest.mark.slow  # builds the package of test_resume's run (dropout, EMA, keep_best, n-gram rows): ~40 s
def test_a_compiled_recipe_stopped_and_resumed_ends_as_if_never_stopped(tmp_path):
    """SIGTERM at step 150 of a run on the compiled step, then resume=: every logged loss and the final
    val loss equal the uninterrupted run's, bit for bit (the optimiser's state, the moving average,
    both generators, dropout's seeds: all saved and restored as on the plain path)."""
    import signal

    from holds import wait_held
    from test_resume import gate, losses, start
    whole = start(tmp_path / "whole", "train.fast=on")
    assert whole.wait(timeout=600) == 0, whole.communicate()
    proc = start(tmp_path / "run", "train.fast=on", at=150)
    wait_held(proc, gate(tmp_path / "run"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.communicate()
    out = run_cmd([ROOT / "train.py", f"resume={tmp_path / 'run'}"]).stdout
    assert "resuming at step 150 of 300" in out and "loaded from the cache" in out
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")
    s, w = summary(tmp_path / "run"), summary(tmp_path / "whole")
    assert s["path"] == w["path"] == "compiled" and s["val_loss"] == w["val_loss"] and s["resumed_at"] == [150]
