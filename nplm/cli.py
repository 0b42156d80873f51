"""Command-line plumbing shared by the scripts: `key=value` arguments and one-line errors."""
from __future__ import annotations

import re
import sys

from nplm.checkpoint import CheckpointError, load_model
from nplm.config import RENAMED, ConfigError
from nplm.data import DataError, load_data

USER_ERRORS = (ConfigError, DataError, CheckpointError)
TYPE_NAMES = {"Integer": "a whole number", "Float": "a number", "bool": "true or false"}  # as OmegaConf names them


def parse_args(argv: list[str], usage: str, defaults: dict) -> tuple[str, dict]:
    """`<run dir> key=value ...` -> (run dir, options); unknown keys and bad values exit 2 with usage."""
    if not argv or argv[0] in ("-h", "--help") or "=" in argv[0]:
        fail(f"usage: {usage}", code=0 if argv and argv[0] in ("-h", "--help") else 2)
    opts = dict(defaults)
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if not eq or key not in defaults:
            fail(f"unknown argument {arg!r}; usage: {usage}")
        kind = type(defaults[key])
        try:
            opts[key] = kind(value)
        except ValueError:
            fail(f"{key}={value!r} must be {kind.__name__}; usage: {usage}")
    return argv[0], opts


def config_error_line(e: Exception) -> str:
    """Hydra's and OmegaConf's several-line composition errors as one line with what to do."""
    from hydra.errors import MissingConfigException
    if isinstance(e, MissingConfigException):
        first = str(e).strip().splitlines()[0]
        options = list(e.options or [])
        return first + (f"; available: {', '.join(options)}" if options else "")
    cause = e.__cause__ if isinstance(e.__cause__, Exception) else None
    lines = [ln.strip() for err in (e, cause) if err is not None for ln in str(err).splitlines()
             if ln.strip() and not ln.startswith((" ", "\t")) and "HYDRA_FULL_ERROR" not in ln
             and not ln.startswith("To append to your config")]
    message = "; ".join(ln.rstrip(".") for ln in lines) or type(e).__name__
    message = re.sub(r"^Error merging override (\S+); ", r"cannot apply \1: ", message)  # not "error: Error ..."
    if "NoViableAlt" in message or "mismatched input" in message:  # Hydra's override grammar refused an argument
        arg = next((a for a in sys.argv[1:] if a in message), None)
        if arg is not None and "~" in arg.partition("=")[2]:
            key, _, value = arg.partition("=")
            return (f"cannot read {arg}: the shell does not expand '~' inside key=value, and Hydra cannot parse it; "
                    f"write the folder out ({key}=$HOME{value[value.index('~') + 1:]}) or quote the value "
                    f"({key}='\"{value}\"')")
        if arg is not None:
            return f"cannot parse the argument {arg}; quote a value that holds special characters ({arg.partition('=')[0]}='\"...\"')"
    renamed = [f"{old} is now called {new}" for old, new in RENAMED.items() if f"'{old}'" in message]
    if renamed:  # a key renamed since (data.dev_frac -> data.val_frac)
        return f"{message.split(';')[0]}: {'; '.join(renamed)}"
    if "Key '" in message and " not in " in message:  # an unknown key
        message += "; check its spelling (python train.py --cfg job prints every key and its value)"
    wanted = re.search(r"could not be converted to (\w+)|is not a valid (bool)", message)
    if wanted:  # a value of the wrong type
        kind = wanted[1] or wanted[2]
        message += f"; give it {TYPE_NAMES.get(kind, kind)} (python train.py --help lists each key's type)"
    return message


def fail(message: str, code: int = 2) -> None:
    print(message if code == 0 else f"error: {message}", file=sys.stdout if code == 0 else sys.stderr)
    sys.exit(code)


def load_run(run_dir: str):
    """A saved run's (model, config, checkpoint, dataset), or a one-line error and exit 2."""
    try:
        model, cfg, state = load_model(run_dir)
        d = cfg.data
        data = load_data(d, cfg.model.block_size)
    except USER_ERRORS as e:
        fail(str(e))
    if data.vocab.itos != state["itos"]:
        fail(f"the data at {d.path or 'the bundled names'} has a different vocabulary from the checkpoint's; "
             "the run must be used with the data it was trained on")
    return model, cfg, state, data
