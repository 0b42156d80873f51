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
