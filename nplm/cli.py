"""Command-line plumbing shared by the scripts: `key=value` arguments and one-line errors."""
from __future__ import annotations

import sys

from nplm.checkpoint import CheckpointError
from nplm.config import ConfigError
from nplm.data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


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


def fail(message: str, code: int = 2) -> None:
    print(message if code == 0 else f"error: {message}", file=sys.stdout if code == 0 else sys.stderr)
    sys.exit(code)
