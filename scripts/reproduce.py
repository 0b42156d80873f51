"""Re-run a recorded run from its saved config and say whether its numbers came back.

    python scripts/reproduce.py outputs/runs/<run>                       # train it again, compare
    python scripts/reproduce.py outputs/runs/<run> out=/tmp/again        # ... in that folder
    python scripts/reproduce.py outputs/runs/<run> against=<other run>   # only compare two runs

Trains the run again, in this process, from the config its summary.json records (W&B off, unless
wandb=true), in a new folder (default: outputs/reproduced/<run>-<date_time>), with the pins of its
reproducible mode (nplm/repro.py) set before torch is loaded. Then compares the two runs' metrics.csv
row by row and says: bit-identical, or the step where they first differ and the largest difference
of each column; and what differs in what the runs recorded about themselves (torch and Python
versions, the git commit, the CPU, the pins). Exit 0: bit-identical; 1: the numbers differ; 2: bad input.
"""
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # nplm from this checkout, also when not installed

from nplm import repro  # noqa: E402  (torch-free: the pins go in before torch is loaded)

USAGE = "python scripts/reproduce.py <run dir> [out=<new run dir>] [against=<other run dir>] [wandb=false]"
COLUMNS = ("train/loss", "val/loss", "lr")
RECORDED = ("torch", "python", "platform", "git_commit", "git_dirty", "cpu", "pins")


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse(argv: list[str]) -> tuple[Path, dict]:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {USAGE}")
        sys.exit(0 if argv else 2)
    opts = {"out": "", "against": "", "wandb": "false"}
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if not eq or key not in opts:
            fail(f"unknown argument {arg!r}; usage: {USAGE}")
        opts[key] = value
    return Path(argv[0]), opts


def recorded(run_dir: Path) -> dict:
    """A run's summary.json, or a one-line error."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        fail(f"{run_dir} holds no readable summary.json; give the folder of a recorded run (under outputs/runs/)")
    if not isinstance(summary.get("config"), dict):
        fail(f"{run_dir}/summary.json records no config (the run stopped before it began); nothing to re-run")
    return summary


def metrics(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        fail(f"{run_dir} holds no metrics.csv")


def retrain(summary: dict, out_dir: Path, wandb: bool) -> None:
    """Train the recorded config again into out_dir, in this process (its log to out_dir/train.log too)."""
    config = summary["config"]
    repro.pin(config.get("reproducible", True))
    from nplm.cli import USER_ERRORS
    from nplm.config import from_dict
    from nplm.train import run
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(out_dir / "train.log")])
    try:
        cfg = from_dict(config)
        cfg.resume = None
        if not wandb:
            cfg.wandb.mode = "disabled"
        run(cfg, out_dir)
    except USER_ERRORS as e:
        fail(f"the recorded config cannot run here: {e}")


def differences(a_dir: Path, b_dir: Path) -> tuple[bool, list[str]]:
    """(bit-identical?, lines saying how the two runs' metrics and records differ)."""
    a, b = metrics(a_dir), metrics(b_dir)
    lines = []
    if [r["step"] for r in a] != [r["step"] for r in b]:
        lines.append(f"the runs logged different steps ({len(a)} rows against {len(b)})")
    pairs = [(x, y) for x, y in zip(a, b) if x["step"] == y["step"]]
    first = next(((x["step"], col) for x, y in pairs for col in COLUMNS if x.get(col) != y.get(col)), None)
    if first is not None:
        step, col = first
        x, y = next((x, y) for x, y in pairs if x["step"] == step)
        lines.append(f"metrics first differ at step {step}: {col} {x[col]} against {y[col]}")
        for col in COLUMNS:
            diffs = [(abs(float(x[col]) - float(y[col])), abs(float(x[col]) - float(y[col])) / max(abs(float(x[col])),
                      1e-30)) for x, y in pairs if x.get(col) and y.get(col)]
            if diffs and max(diffs)[0] > 0:
                lines.append(f"largest difference of {col}: {max(d for d, _ in diffs):.3g} "
                             f"(relative {max(r for _, r in diffs):.3g})")
    sa, sb = recorded(a_dir), recorded(b_dir)
    for key in ("val_loss", "train_loss"):
        x, y = sa.get(key), sb.get(key)
        if x != y and isinstance(x, float) and isinstance(y, float) and math.isfinite(x) and math.isfinite(y):
            lines.append(f"final {key}: {x:.10g} against {y:.10g} ({y - x:+.3g})")
    same = not lines
    for key in RECORDED:  # what the runs recorded about where and how they ran
        if sa.get(key) != sb.get(key):
            lines.append(f"recorded {key}: {sa.get(key)} | {sb.get(key)}")
    return same, lines


def main(argv: list[str]) -> None:
    run_dir, opts = parse(argv)
    summary = recorded(run_dir)
    if opts["against"]:
        other = Path(opts["against"])
        recorded(other)
    else:
        other = Path(opts["out"]) if opts["out"] else \
            ROOT / "outputs" / "reproduced" / f"{run_dir.resolve().name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        if other.exists() and any(other.iterdir()):
            fail(f"{other} is not empty; give a new folder with out=...")
        pins, now = summary.get("pins"), repro.expected()
        if summary.get("config", {}).get("reproducible", True) and pins and now and pins != now:
            print(f"note: {run_dir} ran with other pins than this version's reproducible mode ({pins} against "
                  f"{now}; docs/reproducibility.md): its numbers will not come back to the last digit")
        retrain(summary, other, opts["wandb"].lower() in ("true", "1", "yes"))
    same, lines = differences(run_dir, other)
    if same:
        print(f"bit-identical: {other} has the same {len(metrics(other))} metrics rows and final losses as {run_dir}")
    else:
        print(f"not identical: {run_dir} | {other}")
    for line in lines:
        print(f"  {line}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
