"""Sampling: draw words from a trained model and label each as in train, in val, or new."""
from __future__ import annotations

import torch

from nplm.data import Dataset, Vocab
from nplm.model import model_device


@torch.inference_mode()
def sample_words(model: torch.nn.Module, vocab: Vocab, n: int, generator: torch.Generator,
                 max_len: int = 50) -> list[str]:
    """n words, each grown one character at a time until the model emits '.' (or max_len)."""
    if n == 0:
        return []
    model.eval()
    device = model_device(model)
    idx = torch.zeros(n, model.block_size, dtype=torch.long, device=device)  # all start from '...'
    out = torch.zeros(n, max_len, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(max_len):
        logits, _ = model(idx)
        probs = torch.softmax(logits.float().cpu(), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (n,) on CPU: reproducible
        out[:, t] = torch.where(done, 0, nxt)
        done |= nxt == 0
        if done.all():
            break
        idx = torch.cat([idx[:, 1:], nxt.to(device).unsqueeze(1)], dim=1)
    words = []
    for row in out.tolist():
        end = row.index(0) if 0 in row else len(row)
        words.append(vocab.decode(row[:end]))
    return words


def label_words(words: list[str], data: Dataset) -> list[tuple[str, str]]:
    """(word, 'train' | 'val' | 'new'): where the word occurs in the data (test is never looked at)."""
    train, val = set(data.words["train"]), set(data.words["val"])
    return [(w, "train" if w in train else "val" if w in val else "new") for w in words]
