"""Data: read a text file, build the vocabulary, split it, make (context, next token) examples.

data.level=char (default) follows makemore part 2 exactly (docs/reference.md): one word per line, '.'
is index 0 and marks both the start and the end of a word; the words are shuffled once with
random.Random(split_seed) and cut into train/val/test by word, so one name's examples never
straddle two splits.

data.level=word is Bengio et al.'s setting: each line is a sentence, tokenised into words and
punctuation marks (TOKEN below; data.lowercase folds case first), or, with
data.tokenizer=whitespace, split at whitespace alone, as tokenised corpora (Penn Treebank, WikiText,
Brown) expect to be read: `Mr.` and `''` stay one token, and the corpus's own `<unk>` is the
unknown word; `</s>` is index 0 and marks both
the start and the end of a line, as '.' does for names; `<unk>` stands for every word seen fewer
than data.min_count times in the training split (or outside the data.max_vocab most frequent).
The lines are cut in order, not shuffled, as the paper cut its corpus by position: the first
train_frac of them train, the next val_frac val, the rest test; or, with data.train_tokens and
data.val_tokens, by counts of tokens (the paper: the first 800,000 words train, the next 200,000
validate): lines go to train until train_tokens tokens are reached, then to val until val_tokens
more are, the rest to test. Tokens are the TOKEN matches (words and marks, not </s>); the cut
falls at the end of the line that reaches the count, so no sentence straddles two splits.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

BOUNDARY = "."
SPLITS = ("train", "val", "test")
EOS, UNK = "</s>", "<unk>"  # data.level=word: the line boundary (index 0) and the unknown word (index 1)
TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # a word (letters, digits, _, inner apostrophes) or one mark


class DataError(ValueError):
    """The data file cannot be used; the message says why and how to fix it."""


def bundled_names_path() -> Path:
    """The names.txt shipped inside the package (works from any directory, installed or not)."""
    return asset_path("names.txt")


def asset_path(name: str) -> Path:
    """A data file shipped inside the package (nplm/assets/)."""
    return Path(str(resources.files("nplm") / "assets" / name))


def read_lines(path: str | Path | None = None, what: str = "word") -> list[str]:
    """The non-blank lines of a UTF-8 file, surrounding whitespace stripped."""
    path = Path(path) if path else bundled_names_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} does not exist; set data.path to a one-{what}-per-line "
                        "text file, or leave it unset for the bundled names") from None
    except IsADirectoryError:
        raise DataError(f"data.path={str(path)!r} is a directory; point it at a text file") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} is not UTF-8 text (line {line}, byte {e.start}); "
                        "convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {e.strerror}") from None
    lines = [w.strip() for w in text.splitlines()]
    lines = [w for w in lines if w]
    if not lines:
        raise DataError(f"data file {str(path)!r} holds no {what}s; it needs one {what} per line")
    return lines


def load_words(path: str | Path | None = None) -> list[str]:
    """Read one word per line. Surrounding whitespace is stripped and blank lines are skipped."""
    words = read_lines(path)
    bad = [w for w in words if BOUNDARY in w]
    if bad:
        where = str(path or bundled_names_path())
        raise DataError(f"{len(bad)} word(s) in {where!r} contain the boundary character {BOUNDARY!r} "
                        f"(first: {bad[0]!r}); remove it from the data")
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


def split_words(words: list[str], train_frac: float, val_frac: float, seed: int) -> dict[str, list[str]]:
    """Shuffle a copy once with random.Random(seed), then cut into train/val/test by word."""
    words = list(words)
    random.Random(seed).shuffle(words)  # same draws as the lecture's random.seed(42); random.shuffle
    n1 = int(train_frac * len(words))
    n2 = int((train_frac + val_frac) * len(words))
    splits = {"train": words[:n1], "val": words[n1:n2], "test": words[n2:]}
    empty = [name for name, ws in splits.items() if not ws]
    if empty:
        raise DataError(f"{len(words)} words are too few: the {', '.join(empty)} split(s) would be empty; "
                        "use more words or change data.train_frac / data.val_frac")
    return splits


def build_examples(words: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context, next character) pair: X (N, block_size) and Y (N,), both int64, in the lecture's
    order: word by word, each word's characters and then the boundary, the context starting as
    block_size boundaries. Built as one stream, each word preceded by block_size boundaries, from
    which the contexts are gathered at once (the lecture's loop over characters takes ~10x longer)."""
    pad = BOUNDARY * block_size
    stream = vocab.encode("".join(pad + w + BOUNDARY for w in words))
    return _gather(stream, torch.tensor([block_size + len(w) + 1 for w in words], dtype=torch.long), block_size)


def build_token_examples(lines: list[list[int]], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for lines of token indices (data.level=word): each line's tokens, then </s> (0)."""
    stream = torch.tensor([i for line in lines for i in [0] * block_size + line + [0]], dtype=torch.long)
    return _gather(stream, torch.tensor([block_size + len(line) + 1 for line in lines], dtype=torch.long),
                   block_size)


def _gather(stream: torch.Tensor, lengths: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X, Y from a stream of parts (lengths), each block_size boundaries and then its tokens."""
    starts = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(len(stream)) - torch.repeat_interleave(starts, lengths)  # position in its part
    targets = torch.nonzero(within >= block_size).squeeze(1)
    X = stream[targets.unsqueeze(1) - block_size + torch.arange(block_size)]
    return X.view(-1, block_size), stream[targets]


@dataclass
class WordVocab:
    """data.level=word: itos[0] = </s>, itos[1] = <unk>, then the kept words, most frequent first."""
    itos: list[str]

    @classmethod
    def from_lines(cls, lines: list[list[str]], min_count: int, max_size: int) -> WordVocab:
        counts = Counter(t for line in lines for t in line)
        counts.pop(UNK, None), counts.pop(EOS, None)  # a corpus's own <unk> is ours, not a word
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([EOS, UNK] + (kept[:max_size - 2] if max_size else kept))

    @property
    def stoi(self) -> dict[str, int]:
        if not hasattr(self, "_stoi"):
            self._stoi = {w: i for i, w in enumerate(self.itos)}
        return self._stoi

    @property
    def size(self) -> int:
        return len(self.itos)

    def encode_tokens(self, tokens: list[str]) -> list[int]:
        stoi = self.stoi
        return [stoi.get(t, 1) for t in tokens]

    def decode(self, idx: list[int]) -> str:
        return " ".join(self.itos[i] for i in idx)


def tokenize(line: str, lowercase: bool, tokenizer: str = "words") -> list[str]:
    """A line's words and punctuation marks (TOKEN), or its whitespace-separated tokens
    (tokenizer=whitespace); case folded if asked (a corpus's <unk> stays <unk>)."""
    if tokenizer == "whitespace":
        return [t if t == UNK else t.lower() for t in line.split()] if lowercase else line.split()
    return TOKEN.findall(line.lower() if lowercase else line)


@dataclass
class Dataset:
    """The words of each split, the vocabulary, and the (X, Y) examples of each split."""
    vocab: Vocab | WordVocab
    words: dict[str, list[str]]  # data.level=word: the lines, tokens joined by spaces
    X: dict[str, torch.Tensor]
    Y: dict[str, torch.Tensor]


def load_dataset(path: str | Path | None, train_frac: float, val_frac: float, split_seed: int,
                 block_size: int, level: str = "char", lowercase: bool = False, min_count: int = 1,
                 max_vocab: int = 0, train_tokens: int = 0, val_tokens: int = 0, tokenizer: str = "words") -> Dataset:
    if level == "word":
        return _load_word_dataset(path, train_frac, val_frac, block_size, lowercase, min_count, max_vocab,
                                  train_tokens, val_tokens, tokenizer)
    words = load_words(path)
    vocab = Vocab.from_words(words)  # from all words, as the lecture does: every split is encodable
    splits = split_words(words, train_frac, val_frac, split_seed)
    X, Y = {}, {}
    for name, ws in splits.items():
        X[name], Y[name] = build_examples(ws, vocab, block_size)
    return Dataset(vocab, splits, X, Y)


def _load_word_dataset(path, train_frac: float, val_frac: float, block_size: int, lowercase: bool,
                       min_count: int, max_vocab: int, train_tokens: int = 0, val_tokens: int = 0,
                       tokenizer: str = "words") -> Dataset:
    lines = [tokens for tokens in (tokenize(line, lowercase, tokenizer) for line in read_lines(path, "sentence"))
             if tokens]
    if train_tokens:
        n1 = _cut_by_tokens(lines, train_tokens)
        n2 = n1 + _cut_by_tokens(lines[n1:], val_tokens)
        change = "data.train_tokens / data.val_tokens"
    else:
        n1, n2 = int(train_frac * len(lines)), int((train_frac + val_frac) * len(lines))
        change = "data.train_frac / data.val_frac"
    parts = {"train": lines[:n1], "val": lines[n1:n2], "test": lines[n2:]}  # in order, by position
    empty = [name for name, part in parts.items() if not part]
    if empty:
        total = sum(map(len, lines))
        raise DataError(f"{len(lines)} lines ({total:,} tokens) are too few: the {', '.join(empty)} split(s) "
                        f"would be empty; use more text or change {change}")
    vocab = WordVocab.from_lines(parts["train"], min_count, max_vocab)  # from the training split only
    X, Y = {}, {}
    for name, part in parts.items():
        X[name], Y[name] = build_token_examples([vocab.encode_tokens(t) for t in part], block_size)
    sentences = {name: [" ".join(t) for t in part] for name, part in parts.items()}
    return Dataset(vocab, sentences, X, Y)


def _cut_by_tokens(lines: list[list[str]], tokens: int) -> int:
    """How many lines, from the first, it takes to hold at least `tokens` tokens (all lines if fewer)."""
    seen = 0
    for i, line in enumerate(lines):
        seen += len(line)
        if seen >= tokens:
            return i + 1
    return len(lines)


_last: tuple[tuple, Dataset] | None = None  # the last dataset loaded: the jobs of an in-process sweep share it


def load_data(d, block_size: int) -> Dataset:
    """The dataset a config's `data` section (nplm.config.DataConfig) describes. The last one is
    kept: the next job of an in-process sweep on the same data (file unchanged) gets it at once."""
    global _last
    args = (d.path, d.train_frac, d.val_frac, d.split_seed, block_size, d.level, d.lowercase, d.min_count,
            d.max_vocab, d.train_tokens, d.val_tokens, d.tokenizer)
    try:
        stat = Path(d.path or bundled_names_path()).stat()
        key = (*args, stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # load_dataset says what is wrong with the path
    if key is None or _last is None or _last[0] != key:
        data = load_dataset(*args)
        _last = (key, data) if key is not None else None
        return data
    return _last[1]
