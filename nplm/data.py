"""Data: read a one-word-per-line file, build the character vocabulary, split by words, make examples.

Follows makemore part 2 exactly (REFERENCE.md): '.' is index 0 and marks both the start and the
end of a word; the words are shuffled once with random.Random(split_seed) and cut into
train/dev/test by word, so one name's examples never straddle two splits.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

BOUNDARY = "."
SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """The data file cannot be used; the message says why and how to fix it."""


def bundled_names_path() -> Path:
    """The names.txt shipped inside the package (works from any directory, installed or not)."""
    return Path(str(resources.files("nplm") / "assets" / "names.txt"))


def load_words(path: str | Path | None = None) -> list[str]:
    """Read one word per line. Surrounding whitespace is stripped and blank lines are skipped."""
    path = Path(path) if path else bundled_names_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} does not exist; set data.path to a one-word-per-line "
                        "text file, or leave it unset for the bundled names") from None
    except IsADirectoryError:
        raise DataError(f"data.path={str(path)!r} is a directory; point it at a text file") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} is not UTF-8 text (line {line}, byte {e.start}); "
                        "convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {e.strerror}") from None
    words = [w.strip() for w in text.splitlines()]
    words = [w for w in words if w]
    if not words:
        raise DataError(f"data file {str(path)!r} holds no words; it needs one word per line")
    bad = [w for w in words if BOUNDARY in w]
    if bad:
        raise DataError(f"{len(bad)} word(s) in {str(path)!r} contain the boundary character "
                        f"{BOUNDARY!r} (first: {bad[0]!r}); remove it from the data")
    return words


@dataclass
class Vocab:
    itos: list[str]  # index -> character; itos[0] is the boundary '.'

    def encode(self, text: str) -> torch.Tensor:
        """The indices of text's characters (every one must be in the vocabulary), int64."""
        if not text:
            return torch.zeros(0, dtype=torch.long)
        points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
        table = torch.full((max(map(ord, self.itos)) + 1,), -1, dtype=torch.long)
        table[torch.tensor([ord(ch) for ch in self.itos])] = torch.arange(len(self.itos))
        return table[points]

    @classmethod
    def from_words(cls, words: list[str]) -> "Vocab":
        return cls([BOUNDARY] + sorted(set("".join(words))))

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.itos)}

    @property
    def size(self) -> int:
        return len(self.itos)

    def decode(self, idx: list[int]) -> str:
        return "".join(self.itos[i] for i in idx)


def split_words(words: list[str], train_frac: float, dev_frac: float, seed: int) -> dict[str, list[str]]:
    """Shuffle a copy once with random.Random(seed), then cut into train/dev/test by word."""
    words = list(words)
    random.Random(seed).shuffle(words)  # same draws as the lecture's random.seed(42); random.shuffle
    n1 = int(train_frac * len(words))
    n2 = int((train_frac + dev_frac) * len(words))
    splits = {"train": words[:n1], "dev": words[n1:n2], "test": words[n2:]}
    empty = [name for name, ws in splits.items() if not ws]
    if empty:
        raise DataError(f"{len(words)} words are too few: the {', '.join(empty)} split(s) would be empty; "
                        "use more words or change data.train_frac / data.dev_frac")
    return splits


def build_examples(words: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context, next character) pair: X (N, block_size) and Y (N,), both int64, in the lecture's
    order: word by word, each word's characters and then the boundary, the context starting as
    block_size boundaries. Built as one stream, each word preceded by block_size boundaries, from
    which the contexts are gathered at once (the lecture's loop over characters takes ~10x longer)."""
    pad = BOUNDARY * block_size
    stream = vocab.encode("".join(pad + w + BOUNDARY for w in words))
    lengths = torch.tensor([block_size + len(w) + 1 for w in words], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(len(stream)) - torch.repeat_interleave(starts, lengths)  # position in its word's part
    targets = torch.nonzero(within >= block_size).squeeze(1)
    X = stream[targets.unsqueeze(1) - block_size + torch.arange(block_size)]
    return X.view(-1, block_size), stream[targets]


@dataclass
class Dataset:
    """The words of each split, the vocabulary, and the (X, Y) examples of each split."""
    vocab: Vocab
    words: dict[str, list[str]]
    X: dict[str, torch.Tensor]
    Y: dict[str, torch.Tensor]


def load_dataset(path: str | Path | None, train_frac: float, dev_frac: float, split_seed: int,
                 block_size: int) -> Dataset:
    words = load_words(path)
    vocab = Vocab.from_words(words)  # from all words, as the lecture does: every split is encodable
    splits = split_words(words, train_frac, dev_frac, split_seed)
    X, Y = {}, {}
    for name, ws in splits.items():
        X[name], Y[name] = build_examples(ws, vocab, block_size)
    return Dataset(vocab, splits, X, Y)
