"""The model: shapes, the lecture's exact initial draws, and a sane initial loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from nplm.config import ModelConfig
from nplm.model import NPLM

LECTURE = ModelConfig(n_embd=10, block_size=3, n_hidden=200, init="lecture")


def test_shapes_and_param_count():
    model = NPLM(LECTURE, 27)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    idx = torch.randint(0, 27, (5, 3))
    logits, loss = model(idx)
    assert logits.shape == (5, 27) and loss is None
    _, loss = model(idx, torch.randint(0, 27, (5,)))
    assert loss.dim() == 0
    assert model.num_params() == 11897


def test_lecture_init_is_bit_identical():
    g = torch.Generator().manual_seed(2147483647)
    C = torch.randn((27, 10), generator=g)
    W1 = torch.randn((30, 200), generator=g)
    b1 = torch.randn(200, generator=g)
    W2 = torch.randn((200, 27), generator=g)
    b2 = torch.randn(27, generator=g)
    after = torch.randint(0, 1000, (32,), generator=g)  # the first minibatch draw

    model = NPLM(LECTURE, 27)
    g2 = torch.Generator().manual_seed(2147483647)
    model.init_weights("lecture", g2)
    for mine, ref in zip(model.parameters(), (C, W1, b1, W2, b2), strict=True):  # C, W1, b1, W2, b2
        assert torch.equal(mine, ref)
    assert torch.equal(torch.randint(0, 1000, (32,), generator=g2), after)  # generator left in step

    # and the forward pass is the lecture's arithmetic
    idx, y = torch.randint(0, 27, (64, 3)), torch.randint(0, 27, (64,))
    ref_loss = F.cross_entropy(torch.tanh(C[idx].view(-1, 30) @ W1 + b1) @ W2 + b2, y)
    assert torch.equal(model(idx, y)[1], ref_loss)


def test_scaled_init_starts_near_uniform():
    model = NPLM(ModelConfig(n_embd=16, block_size=5, n_hidden=200, init="scaled"), 27)
    model.init_weights("scaled", torch.Generator().manual_seed(1))
    idx, y = torch.randint(0, 27, (4096, 5)), torch.randint(0, 27, (4096,))
    _, loss = model(idx, y)
    assert abs(loss.item() - math.log(27)) < 0.05
    # whereas the raw lecture draws start far above it
    model.init_weights("lecture", torch.Generator().manual_seed(1))
    assert model(idx, y)[1].item() > 10


def deep(vocab_size=27, **kw):
    base = dict(type="nplm", n_embd=8, block_size=3, n_hidden=32, init="scaled", n_layer=2)
    return NPLM(ModelConfig(**{**base, **kw}), vocab_size)


def test_depth_and_norms_shapes():
    for norm in ("none", "batchnorm", "layernorm"):
        model = deep(norm=norm)
        model.init_weights("scaled", torch.Generator().manual_seed(0))
        assert len(model.hidden) == 2 and model(torch.randint(0, 27, (16, 3)))[0].shape == (16, 27)


def test_batchnorm_uses_running_statistics_in_eval():
    model = deep(norm="batchnorm")
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    x = torch.randint(0, 27, (64, 3))
    model.train()
    model(x)  # updates the running statistics
    model.eval()
    one = model(x[:1])[0]  # a batch of one works in eval, and agrees with the same row in a batch
    assert torch.allclose(one, model(x)[0][:1], atol=1e-5)
    assert model.norms[0].running_mean.abs().sum() > 0


def test_dropout_only_while_training():
    model = deep(dropout=0.5)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    x = torch.randint(0, 27, (8, 3))
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_word_dropout_drops_whole_context_tokens_only_while_training():
    model = deep(word_dropout=0.5)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    x = torch.randint(0, 27, (256, 3))
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0]) and torch.equal(model._features(x)[0], model.C[x].view(256, -1))
    model.train()
    torch.manual_seed(0)
    feats = model._features(x)[0].view(256, 3, -1)
    kept = feats.abs().sum(-1) > 0  # (B, block_size): a token's vector is either all zero or all kept
    assert torch.equal(feats[~kept], torch.zeros_like(feats[~kept]))
    assert torch.allclose(feats[kept], 2 * model.C[x][kept])  # the kept ones scaled by 1 / (1 - p)
    assert 0.4 < 1 - kept.float().mean() < 0.6


def test_direct_connections_start_at_zero_and_learn():
    with_direct, without = deep(direct=True), deep()
    for m in (with_direct, without):
        m.init_weights("scaled", torch.Generator().manual_seed(0))
    x, y = torch.randint(0, 27, (8, 3)), torch.randint(0, 27, (8,))
    assert torch.equal(with_direct(x)[0], without(x)[0])
    with_direct(x, y)[1].backward()
    assert with_direct.direct.grad.abs().sum() > 0


def test_adaptive_softmax_scores_every_token_and_trains_on_the_targets_clusters():
    """softmax_cutoffs: log-probabilities over the whole vocabulary in eval (they sum to 1), near uniform
    at the start; while training the loss alone, equal to the eval loss on the same weights; and the
    targets' log-probabilities alone (evaluation's path) equal to those of the whole vocabulary."""
    model, V = deep(200, softmax_cutoffs=[10, 50], softmax_div=2.0), 200
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    x, y = torch.randint(0, V, (4096, 3)), torch.randint(0, V, (4096,))
    model.eval()
    logp, loss = model(x, y)
    assert logp.shape == (4096, V) and torch.allclose(logp.exp().sum(1), torch.ones(4096), atol=1e-5)
    assert torch.equal(loss, F.nll_loss(logp, y)) and abs(loss.item() - math.log(V)) < 0.05
    assert torch.allclose(model.adaptive_log_prob(x, y), logp.gather(1, y[:, None]).squeeze(1), atol=1e-5)
    model.train()  # no dropout in deep(): the same function, computed only where the targets are
    none, train_loss = model(x, y)
    assert none is None and torch.allclose(train_loss, loss, atol=1e-5)
    train_loss.backward()
    assert all(p.grad is not None for p in model.adaptive.parameters())


def test_adaptive_softmax_refuses_cutoffs_past_the_vocabulary():
    from nplm.config import ConfigError
    with pytest.raises(ConfigError, match=r"model.softmax_cutoffs=\[10, 300\] must all be below vocab_size 200"):
        NPLM(ModelConfig(type="nplm", n_embd=8, block_size=3, n_hidden=32, softmax_cutoffs=[10, 300]), 200)
    with pytest.raises(ConfigError, match="model.softmax_div=8 leaves the last of 2 clusters no units"):
        NPLM(ModelConfig(type="nplm", n_embd=8, block_size=3, n_hidden=32, softmax_cutoffs=[10, 50],
                         softmax_div=8.0), 200)


def test_weight_decay_only_on_weight_matrices_unless_asked():
    from nplm.config import OptimConfig
    from nplm.optim import make_optimizer
    model = deep(norm="layernorm", direct=True)
    opt = make_optimizer(model, OptimConfig(name="adamw", lr=0.01, schedule="constant", weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"hidden.0.weight", "hidden.1.weight", "out.weight", "direct"}
    opt = make_optimizer(model, OptimConfig(name="adamw", lr=0.01, schedule="constant", weight_decay=0.1,
                                            decay_all=True))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}  # asked for: everything, C and norms included
    opt = make_optimizer(model, OptimConfig(name="sgd", lr=0.01, schedule="constant", weight_decay=1e-4,
                                            decay_features=True))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"C", "hidden.0.weight", "hidden.1.weight", "out.weight", "direct"}  # the paper's: no biases


def test_no_hidden_layer_is_the_papers_linear_model():
    """n_hidden=0 (the paper's h = 0): the output layer reads the concatenated features."""
    model = NPLM(ModelConfig(type="nplm", n_embd=8, block_size=3, n_hidden=0, init="scaled"), 27)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    assert len(model.hidden) == 0 and model.out.weight.shape == (24, 27)
    assert model.num_params() == 27 * 8 + 24 * 27 + 27
    logits, loss = model(torch.randint(0, 27, (5, 3)), torch.randint(0, 27, (5,)))
    assert logits.shape == (5, 27) and abs(loss.item() - math.log(27)) < 0.1


def test_maxent_rows_are_exact_for_short_contexts_and_hashed_for_long_ones():
    """model.maxent_order: each order's row of the table; logits = the network's + the rows' sum."""
    model = deep(maxent_order=3, maxent_buckets=1000)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    me = model.maxent
    assert me.rows == [27, 729, 1000] and me.exact == [True, True, False]  # 27**3 > 1000: hashed
    assert me.weight.shape == (27 + 729 + 1000, 27) and model.num_params() == deep().num_params() + 1756 * 27
    x = torch.randint(0, 27, (500, 3))
    rows = me.index(x)
    assert torch.equal(rows[:, 0], x[:, -1]) and torch.equal(rows[:, 1], 27 + x[:, -1] * 27 + x[:, -2])
    assert rows[:, 2].min() >= 27 + 729 and rows[:, 2].max() < 27 + 729 + 1000
    assert len(set(rows[:, 2].tolist())) > 0.5 * len(set(map(tuple, x.tolist())))  # the hash spreads them
    same = torch.tensor([[1, 2, 3], [9, 2, 3]])  # contexts that share the last two tokens share those rows
    assert torch.equal(me.index(same)[0, :2], me.index(same)[1, :2])
    without = deep()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("maxent")})
    assert torch.equal(model(x)[0], without(x)[0])  # the table starts at zero
    with torch.no_grad():
        me.weight.normal_()
    assert torch.allclose(model(x)[0], without(x)[0] + me.weight[rows].sum(1), atol=1e-6)


def test_maxent_gradient_is_sparse_and_its_table_neither_decayed_nor_averaged():
    from nplm.config import OptimConfig
    from nplm.optim import EMA, make_optimizer
    model = deep(maxent_order=2)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    opt = make_optimizer(model, OptimConfig(name="adamw", lr=0.01, schedule="constant", weight_decay=0.1,
                                            decay_all=True, maxent_lr_scale=0.5))
    table = [g for g in opt.param_groups if any(p is model.maxent.weight for p in g["params"])]
    assert len(table) == 1 and table[0]["weight_decay"] == 0 and len(table[0]["params"]) == 1
    opt.set_lr(0.01)
    assert table[0]["lr"] == 0.005 and opt.param_groups[0]["lr"] == 0.01
    ema = EMA(model, 0.9)
    assert ema.module.maxent.weight is model.maxent.weight and ema.module.C is not model.C
    x, y = torch.tensor([[0, 1, 2], [0, 1, 2], [5, 6, 7]]), torch.tensor([3, 4, 8])
    model(x, y)[1].backward()
    grad = model.maxent.weight.grad
    assert grad.is_sparse and set(grad.coalesce().indices()[0].tolist()) == {2, 7, 27 + 2 * 27 + 1, 27 + 7 * 27 + 6}
    before = model.maxent.weight.detach().clone()
    opt.step()
    changed = (model.maxent.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == sorted({2, 7, 27 + 2 * 27 + 1, 27 + 7 * 27 + 6})  # only the rows used


@pytest.mark.parametrize("norm, invariant", [("layernorm", True), ("none", False)])
def test_layernorm_makes_a_layer_blind_to_the_scale_of_its_input_weights(norm, invariant):
    """model.norm=layernorm normalises each row of a hidden layer before tanh: scaling that layer's
    weights and bias by 10 leaves the logits as they were; without a norm it changes them."""
    model = deep(norm=norm)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    model.eval()
    x = torch.randint(0, 27, (16, 3), generator=torch.Generator().manual_seed(1))
    before = model(x)[0]
    with torch.no_grad():
        model.hidden[0].weight.mul_(10)
        model.hidden[0].bias.mul_(10)
    assert torch.allclose(model(x)[0], before, atol=1e-4) == invariant
