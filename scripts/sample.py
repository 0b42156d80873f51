"""Sample names from a saved run, each labelled as in train, in val, or new.

    python scripts/sample.py outputs/runs/2026-11-22/16-13-37 n=20 seed=1
"""
import sys

from nplm import repro

if __name__ == "__main__" and len(sys.argv) > 1:  # the run's own code paths, set before torch loads
    repro.pin(repro.saved_mode(sys.argv[1]))

import torch  # noqa: E402

from nplm.cli import fail, load_run, parse_args  # noqa: E402
from nplm.sample import label_words, sample_words  # noqa: E402

USAGE = "python scripts/sample.py <run dir> [n=20] [seed=1] [max_len=50]"


def main(argv: list[str]) -> None:
    run_dir, opts = parse_args(argv, USAGE, {"n": 20, "seed": 1, "max_len": 50})
    if opts["n"] < 1 or opts["max_len"] < 1:
        fail(f"n and max_len must be at least 1; usage: {USAGE}")
    model, _, _, data = load_run(run_dir)
    words = sample_words(model, data.vocab, opts["n"], torch.Generator().manual_seed(opts["seed"]), opts["max_len"])
    for word, where in label_words(words, data):
        print(f"{word:<20} {'' if where == 'new' else '(in ' + where + ')'}".rstrip())


if __name__ == "__main__":
    main(sys.argv[1:])
