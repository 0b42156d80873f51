"""`python train.py --help`: every key of the schema with its meaning, allowed values and default, the
config groups, shipped experiments and sweeps, examples and the scripts.

Generated, so it never drifts: the meanings are the comments beside each field in nplm/config.py,
the allowed values its CHOICES, the defaults the config composed from conf/ with the command line's
other overrides (`python train.py experiment=lecture --help` shows the lecture's values), the groups
the files in conf/ with their own header comments, the scripts their docstrings.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import re
import textwrap
import tokenize
from pathlib import Path

from nplm import config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = """\
  python train.py                                       # the default recipe (val ~2.04 in about 20 s)
  python train.py model.n_embd=24 optim.lr=0.05 seed=3  # override any key below
  python train.py experiment=lecture                    # makemore part 2's recipe, exactly
  python train.py -m model.n_embd=2,10,24 optim.lr=0.01,0.03   # a sweep: one folder per job, a leaderboard
  python train.py +sweep=grid train.steps=2000          # a named sweep from conf/sweep/
  python train.py resume=outputs/runs/<run>             # continue an interrupted run"""


def field_comments() -> dict[str, str]:
    """{'Config field path': comment} from the comments beside (and continuing below) each field of
    the dataclasses in nplm/config.py."""
    source = Path(config.__file__).read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                parts, line = [comments.get(item.end_lineno, "")], item.end_lineno + 1
                while line in comments and lines[line - 1].lstrip().startswith("#"):  # a comment continued
                    parts.append(comments[line])
                    line += 1
                out[f"{node.name}.{item.target.id}"] = " ".join(p for p in parts if p)
    return out


def keys_text(cfg: config.Config) -> str:
    """Each section's keys: name, type, value in cfg, allowed values, meaning."""
    comments, blocks = field_comments(), []

    def walk(obj, cls_name: str, prefix: str) -> list[str]:
        rows = []
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), prefix + f.name
            if dataclasses.is_dataclass(value):
                blocks.append((key, walk(value, type(value).__name__, key + ".")))
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            meaning = comments.get(f"{cls_name}.{f.name}", "")
            choices = config.CHOICES.get(key)
            if choices and not any(f"{c} |" in meaning or f"| {c}" in meaning for c in choices[1:]):
                meaning = f"one of {' | '.join(choices)}. {meaning}".strip()
            kind = kind[len("Optional["):-1] if kind.startswith("Optional[") else kind
            rows.append(f"  {key} = {_show(value)}   ({kind})\n"
                        + textwrap.fill(meaning, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
        return rows

    top = walk(cfg, "Config", "")
    sections = [("top level", top)] + blocks
    return "\n\n".join(f"{name}:\n" + "\n".join(rows) for name, rows in sections if rows)


def groups_text() -> str:
    """conf/'s groups: the option, each file's name and the first line of its header comment."""
    out = []
    for group, how in (("data", "data="), ("model", "model="), ("experiment", "experiment="),
                       ("sweep", "+sweep="), ("launcher", "+launcher=")):
        rows = []
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            name = f"  {how}{path.stem}"
            rows.append(textwrap.fill(_header(path), 100, initial_indent=f"{name:<26}", subsequent_indent=" " * 26))
        out.append(f"{group} ({how}NAME):\n" + "\n".join(rows))
    return "\n".join(out)


def scripts_text() -> str:
    rows = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        rows.append(f"  python scripts/{path.name:<14} {doc.strip().splitlines()[0] if doc else ''}")
    return "\n".join(rows)


def help_text(cfg: config.Config) -> str:
    intro = ("nplm: train Bengio et al.'s neural probabilistic language model (makemore part 2) from the Hydra "
             "configs in conf/.\n\nusage: python train.py [-m] [key=value ...] [group=option ...]")
    more = ("more: README.md; python train.py --cfg job prints the composed config; --hydra-help shows Hydra's "
            "own options.")
    return "\n\n".join([
        intro,
        "examples:\n" + EXAMPLES,
        "config groups and shipped recipes:\n" + groups_text(),
        "keys (value = the default, or as set by the other arguments given with --help):\n\n" + keys_text(cfg),
        "scripts (run on a run or sweep folder):\n" + scripts_text(),
        more,
    ]) + "\n"


def _header(path: Path) -> str:
    """The first sentence of a YAML file's header comment (less Hydra directives and command lines)."""
    text = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if words and not words.startswith(("@package", "python ")):
            text.append(words)
    return re.split(r"\.\s+(?=[A-Z(])", " ".join(text))[0].rstrip(".")


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
