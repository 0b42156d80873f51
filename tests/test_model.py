"""The model: shapes, the lecture's exact initial draws, and a sane initial loss."""
import math

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
    for mine, ref in zip((model.C, model.W1, model.b1, model.W2, model.b2), (C, W1, b1, W2, b2)):
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
