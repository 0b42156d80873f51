"""The yardstick: makemore part 2's training loop written the obvious way, as in the lecture.

Kept as the reference that the runner is checked against (same losses) and benchmarked against
(scripts/benchmark.py). Not used by the runner itself.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from nplm.data import load_dataset


def lecture_loop(steps: int = 200_000, batch_size: int = 32, seed: int = 2147483647,
                 n_embd: int = 10, block_size: int = 3, n_hidden: int = 200,
                 decay_step: int = 100_000, lr: float = 0.1, device: str = "cpu") -> dict:
    """Train the lecture MLP exactly as the notebook does (lr, then lr / 10 from decay_step);
    return the parameters, the full-split losses and the seconds the training loop took. On
    device=cuda the same draws (from the CPU generator, as the runner draws them), tensors on the GPU."""
    data = load_dataset(None, 0.8, 0.1, 42, block_size)
    Xtr, Ytr, Xval, Yval = (data.X["train"].to(device), data.Y["train"].to(device), data.X["val"].to(device),
                            data.Y["val"].to(device))
    V = data.vocab.size
    g = torch.Generator().manual_seed(seed)
    C = torch.randn((V, n_embd), generator=g).to(device)
    W1 = torch.randn((block_size * n_embd, n_hidden), generator=g).to(device)
    b1 = torch.randn(n_hidden, generator=g).to(device)
    W2 = torch.randn((n_hidden, V), generator=g).to(device)
    b2 = torch.randn(V, generator=g).to(device)
    parameters = [C, W1, b1, W2, b2]
    for p in parameters:
        p.requires_grad = True

    t0 = time.perf_counter()
    for i in range(steps):
        ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g).to(device)
        emb = C[Xtr[ix]]
        h = torch.tanh(emb.view(-1, block_size * n_embd) @ W1 + b1)
        logits = h @ W2 + b2
        loss = F.cross_entropy(logits, Ytr[ix])
        for p in parameters:
            p.grad = None
        loss.backward()
        step_lr = lr if i < decay_step else lr / 10
        for p in parameters:
            p.data += -step_lr * p.grad
    if device != "cpu":
        torch.cuda.synchronize()  # the queued steps are part of the training time
    train_time = time.perf_counter() - t0

    def split_loss(X, Y):
        with torch.no_grad():
            h = torch.tanh(C[X].view(-1, block_size * n_embd) @ W1 + b1)
            return F.cross_entropy(h @ W2 + b2, Y).item()

    return {"params": [p.detach() for p in parameters],
            "train_loss": split_loss(Xtr, Ytr), "val_loss": split_loss(Xval, Yval), "train_time_s": train_time}
