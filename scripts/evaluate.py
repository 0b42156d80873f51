"""Evaluate a saved run on one split (nats per token, and perplexity), and record it as eval_<split>.json
in the run.

    python scripts/evaluate.py outputs/runs/2026-11-22/16-13-37 split=test
The test split is evaluated only here, only when asked for.
"""
import json
import sys
from pathlib import Path

from nplm import repro

if __name__ == "__main__" and len(sys.argv) > 1:  # the run's own code paths, set before torch loads
    repro.pin(repro.saved_mode(sys.argv[1]))

from nplm.cli import fail, load_run, parse_args  # noqa: E402
from nplm.data import SPLITS  # noqa: E402
from nplm.evaluate import loss_without_boundary, perplexity, split_loss  # noqa: E402
from nplm.mixture import Mixture  # noqa: E402

USAGE = "python scripts/evaluate.py <run dir> [split=val|train|test] [chunk=4096]"


def main(argv: list[str]) -> None:
    run_dir, opts = parse_args(argv, USAGE, {"split": "val", "chunk": 4096})
    if opts["split"] not in SPLITS:
        fail(f"split={opts['split']!r} is not known; use one of: {', '.join(SPLITS)}")
    model, cfg, state, data = load_run(run_dir)
    split = opts["split"]
    loss = split_loss(model, data.X[split], data.Y[split], opts["chunk"])
    step = state.get("weights_step", state["step"])  # keep_best: the best evaluation's step, before the last
    result = {"split": split, "loss": loss, "perplexity": perplexity(loss), "examples": len(data.X[split]),
              "step": step, "steps_trained": state["step"]}
    why = "train.keep_best" if cfg.train.keep_best else "train.patience"  # the best evaluation's weights
    when = f"step {step:,}" + (f" of {state['step']:,}, {why}" if step != state["step"] else "")
    print(f"{split} loss {loss:.4f}, perplexity {perplexity(loss):.2f} ({len(data.X[split]):,} examples, "
          f"the weights of {when})")
    if cfg.data.level == "word":  # papers differ on whether the ends of lines count: both figures
        words, share = loss_without_boundary(model, data.X[split], data.Y[split], opts["chunk"])
        result.update(loss_without_boundary=words, perplexity_without_boundary=perplexity(words), boundary_share=share)
        print(f"{split} perplexity {perplexity(loss):.2f} counts each line's </s> ({share:.1%} of the predictions); "
              f"without them {perplexity(words):.2f}")
    if isinstance(model, Mixture):  # model.mix_order: its parts on their own too
        for key, part, name in (("nplm", model.nplm, "network"),
                                ("ngram", model.ngram, f"Kneser-Ney {model.ngram.order}-gram")):
            result[f"{key}_loss"] = part_loss = split_loss(part, data.X[split], data.Y[split], opts["chunk"])
            print(f"  of which the {name} alone: {split} loss {part_loss:.4f}, perplexity {perplexity(part_loss):.2f}")
    if Path(run_dir).is_dir():
        (Path(run_dir) / f"eval_{split}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
