"""The real command, held at given lines of its log (tests/hold/sitecustomize.py says how), so that a
test acts at a known point of a run whatever the machine's speed: start it with `start_held`, wait
for a hold with `wait_held`, then signal the process (which also lets it go on), kill it, or let it go
on with `release`."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

HOLD_DIR = Path(__file__).resolve().parent / "hold"


def start_held(args, gate: Path, *holds, **popen) -> subprocess.Popen:
    """`python ARGS` (train.py and its arguments) in the repository, held at `holds`, in turn: each a
    regular expression searched in the messages of the "nplm" logger (the first message it is found
    in), or (expression, n): the n-th such message. `gate` is the folder the holds are signalled in."""
    gate.mkdir(parents=True, exist_ok=True)
    spec = [[h, 1] if isinstance(h, str) else list(h) for h in holds]
    path = os.pathsep.join(p for p in (str(HOLD_DIR), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **popen.pop("env", {}), "PYTHONPATH": path,
           "NPLM_TEST_HOLD": json.dumps([str(gate), spec])}
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, **popen)


def wait_held(proc: subprocess.Popen, gate: Path, i: int = 0, timeout: float = 300) -> str:
    """Wait until the process is held at hold i (0: the first); the message it is held at. Fails if the
    process ends first, with its output, or after `timeout` seconds (a bound, never reached by a
    working run)."""
    deadline = time.monotonic() + timeout
    while not (gate / f"held-{i}").exists():
        if proc.poll() is not None:
            out = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before hold {i}: {out}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"hold {i} not reached in {timeout} s: {proc.communicate()}")
        time.sleep(0.01)
    return (gate / f"held-{i}").read_text()


def release(gate: Path, i: int = 0) -> None:
    """Let the process go on from hold i."""
    (gate / f"go-{i}").touch()
