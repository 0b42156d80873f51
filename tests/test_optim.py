"""The optimisers: the same arithmetic as torch's, bit for bit, without importing torch._dynamo; their
state saved and loaded in torch's state_dict format; the learning-rate schedules."""
import io
import subprocess
import sys

import pytest
import torch

from nplm.config import ModelConfig, OptimConfig
from nplm.model import NPLM
from nplm.optim import SGD, AdamW, make_optimizer


def model_and_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = NPLM(ModelConfig(type="nplm", n_embd=4, block_size=3, n_hidden=16, n_layer=2, norm="layernorm",
                             direct=True), 27)
    model.init_weights("scaled", g)
    batches = [(torch.randint(0, 27, (32, 3), generator=g), torch.randint(0, 27, (32,), generator=g))
               for _ in range(50)]
    return model, batches


def train(model, opt, batches, lrs):
    for (x, y), lr in zip(batches, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def groups(model, wd):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_equals_torch_adamw_bit_for_bit(wd):
    lrs = [0.01 * (1 - i / 60) for i in range(50)]  # changing every step, as a schedule does
    ours, batches = model_and_batches()
    theirs, _ = model_and_batches()
    a = train(ours, AdamW(groups(ours, wd), lr=0.01, betas=(0.9, 0.99)), batches, lrs)
    b = train(theirs, torch.optim.AdamW(groups(theirs, wd), lr=0.01, betas=(0.9, 0.99), foreach=False), batches, lrs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sgd_momentum_equals_torch_sgd_to_rounding():
    ours, batches = model_and_batches()
    theirs, _ = model_and_batches()
    a = train(ours, SGD(groups(ours, 0.01), lr=0.1, momentum=0.9), batches, [0.1] * 50)
    b = train(theirs, torch.optim.SGD(groups(theirs, 0.01), lr=0.1, momentum=0.9), batches, [0.1] * 50)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_state_dict_round_trip_continues_exactly(name):
    """Save after 20 steps, load into a fresh optimiser (as resume= does), go on: the same as never stopping."""
    cfg = OptimConfig(name=name, lr=0.01, schedule="constant", momentum=0.9, weight_decay=0.1)
    whole, batches = model_and_batches()
    expected = train(whole, make_optimizer(whole, cfg), batches, [0.01] * 50)
    first, _ = model_and_batches()
    opt = make_optimizer(first, cfg)
    train(first, opt, batches[:20], [0.01] * 20)
    saved_model, saved_opt = first.state_dict(), opt.state_dict()
    buf = io.BytesIO()
    torch.save(saved_opt, buf)
    buf.seek(0)
    second, _ = model_and_batches(seed=1)
    second.load_state_dict(saved_model)
    opt2 = make_optimizer(second, cfg)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(x, y) for x, y in zip(train(second, opt2, batches[20:], [0.01] * 30), expected))


def test_adamw_state_dict_is_torch_format():
    model, batches = model_and_batches()
    ours = AdamW(groups(model, 0.1), lr=0.01)
    train(model, ours, batches[:2], [0.01] * 2)
    theirs = torch.optim.AdamW(groups(model, 0.1), lr=0.01)
    theirs.load_state_dict(ours.state_dict())  # a checkpoint's optimiser state is readable by torch too
    assert set(ours.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.equal(theirs.state_dict()["state"][0]["exp_avg"], ours.state[model.C]["exp_avg"])


def test_training_never_imports_torch_dynamo():
    code = ("import sys, torch; from nplm.config import OptimConfig; from nplm.optim import make_optimizer;"
            "m = torch.nn.Linear(3, 3); o = make_optimizer(m, OptimConfig(name='adamw', lr=0.1, schedule='constant'));"
            "m(torch.ones(1, 3)).sum().backward(); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict());"
            "print('torch._dynamo' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_sparse_adamw_is_adamw_on_the_rows_used():
    """The hashed n-gram table's lazy AdamW: where every row is used at every step it is AdamW exactly
    (to rounding); rows a step does not use keep their weights and moments."""
    torch.manual_seed(0)
    dense = torch.nn.Parameter(torch.randn(6, 4))
    sparse = torch.nn.Parameter(dense.detach().clone())
    ours, theirs = AdamW([{"params": [sparse]}], lr=0.01, weight_decay=0.0), \
        torch.optim.AdamW([dense], lr=0.01, weight_decay=0.0)
    for step in range(30):
        rows, target = torch.tensor([0, 1, 2, 3, 4, 5, 2]), torch.randn(7, 4)
        for p, opt, is_sparse in ((sparse, ours, True), (dense, theirs, False)):
            opt.zero_grad()
            ((torch.nn.functional.embedding(rows, p, sparse=is_sparse) - target) ** 2).sum().backward()
            opt.step()
        assert torch.allclose(sparse, dense, atol=1e-6)
    row5 = sparse[5].detach().clone(), ours.state[sparse]["exp_avg"][5].clone()
    ours.zero_grad()
    torch.nn.functional.embedding(torch.tensor([0, 1]), sparse, sparse=True).sum().backward()
    ours.step()
    assert torch.equal(sparse[5], row5[0]) and torch.equal(ours.state[sparse]["exp_avg"][5], row5[1])
    assert not torch.equal(sparse[0], dense[0])


def test_sgd_and_clipping_take_sparse_gradients():
    from nplm.optim import clip_grad_norm
    p = torch.nn.Parameter(torch.zeros(5, 3))
    q = torch.nn.Parameter(torch.zeros(5, 3))
    for param, is_sparse in ((p, True), (q, False)):
        (torch.nn.functional.embedding(torch.tensor([1, 1, 3]), param, sparse=is_sparse) * 10).sum().backward()
    clip_grad_norm([p], 1.0)
    torch.nn.utils.clip_grad_norm_([q], 1.0)
    assert torch.allclose(p.grad.to_dense(), q.grad)  # the same norm as the dense gradient's
    SGD([{"params": [p]}], lr=0.5).step()
    assert torch.allclose(p, -0.5 * q.grad)


def test_ema_equals_torch_averaged_model():
    """train.ema's EMA: torch's AveragedModel (EMA, buffers too) bit for bit, and its state_dict format."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from nplm.optim import EMA
    model = NPLM(ModelConfig(type="nplm", n_embd=4, block_size=3, n_hidden=16, n_layer=2, norm="batchnorm"), 27)
    model.init_weights("scaled", torch.Generator().manual_seed(0))
    ours, theirs = EMA(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = SGD([{"params": list(model.parameters())}], lr=0.1)
    for _ in range(5):
        x, y = torch.randint(0, 27, (32, 3)), torch.randint(0, 27, (32,))
        opt.zero_grad()
        model(x, y)[1].backward()
        opt.step()
        ours.update_parameters(model)
        theirs.update_parameters(model)
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(ref) and all(torch.equal(mine[k], ref[k]) for k in ref)
    fresh = EMA(model, 0.9)
    fresh.load_state_dict(ref)  # a checkpoint written with AveragedModel resumes
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ref.values()))


@pytest.mark.parametrize("name, decay_features, decayed", [
    ("adamw", False, {"direct", "hidden.0.weight", "out.weight"}),
    ("sgd", True, {"C", "direct", "hidden.0.weight", "out.weight"}),
])
def test_weight_decay_reaches_the_weight_matrices_through_make_optimizer(name, decay_features, decayed):
    """optim.weight_decay on the weight matrices (and the features C with optim.decay_features), never on
    the biases; a step with zero gradients moves exactly those, by the optimiser's own rule."""
    g = torch.Generator().manual_seed(0)
    model = NPLM(ModelConfig(type="nplm", n_embd=4, block_size=3, n_hidden=8, direct=True), 27)
    model.init_weights("scaled", g)
    with torch.no_grad():
        model.direct.fill_(0.5)  # it starts at zero, where decay would not show
    o = OptimConfig(name=name, lr=0.1, weight_decay=0.5, decay_features=decay_features, schedule="constant")
    opt = make_optimizer(model, o)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == decayed
    for n in decayed:  # AdamW: p (1 - lr wd), decoupled; SGD: p - lr (wd p), the same here with zero gradients
        assert torch.allclose(dict(model.named_parameters())[n], before[n] * (1 - 0.1 * 0.5))
