"""Sample names from a saved run, each labelled as in train, in dev, or new.

    python scripts/sample.py outputs/runs/2026-11-22/16-13-37 n=20 seed=1
"""
import sys

import torch

from nplm.checkpoint import load_model
from nplm.cli import USER_ERRORS, fail, parse_args
from nplm.data import Vocab, load_dataset
from nplm.sample import label_words, sample_words

USAGE = "python scripts/sample.py <run dir> [n=20] [seed=1] [max_len=50]"


def main(argv: list[str]) -> None:
    run_dir, opts = parse_args(argv, USAGE, {"n": 20, "seed": 1, "max_len": 50})
    if opts["n"] < 1 or opts["max_len"] < 1:
        fail(f"n and max_len must be at least 1; usage: {USAGE}")
    try:
        model, cfg, state = load_model(run_dir)
        d = cfg.data
        data = load_dataset(d.path, d.train_frac, d.dev_frac, d.split_seed, cfg.model.block_size)
    except USER_ERRORS as e:
        fail(str(e))
    words = sample_words(model, Vocab(state["itos"]), opts["n"], torch.Generator().manual_seed(opts["seed"]),
                         opts["max_len"])
    for word, where in label_words(words, data):
        print(f"{word:<20} {'' if where == 'new' else '(in ' + where + ')'}".rstrip())


if __name__ == "__main__":
    main(sys.argv[1:])
