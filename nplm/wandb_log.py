"""The W&B side of a run's record: one W&B run per training run, driven from a worker process.

Starting W&B costs about 2 s of a run's start-up (importing wandb, starting its service, creating the
run, and the first table and image). train.py starts a worker (`start_worker`) before it imports
torch: the worker imports wandb, starts W&B's service and warms up its tables and images on another
core while the run imports torch, composes its config and loads its data; the run then sends it
what to record (JSON lines on its stdin) and goes on without waiting, and waits only at the end of
the run for the W&B run to be finished, so the record is whole when the command returns. Without a
worker (one core, a job started by another launcher, or it failed), the same `Session` runs in
this process. W&B failures are warnings, never the run's failure: the run's own files are the
record (nplm/tracking.py). This module does not import torch, so neither does the worker.

    python -m nplm.wandb_log          # what the worker runs
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys

from nplm.threads import cores

log = logging.getLogger("nplm")
_worker: subprocess.Popen | None = None
WARM = ("requests", "yaml", "wandb.apis.public", "wandb.sdk.data_types.image")  # imported by the worker at start


class Session:
    """The W&B calls of one run after another, each failure turned into a warning (returned by the
    call, and the run's W&B record stops there)."""

    def __init__(self):
        self.run = None

    def init(self, kwargs: dict) -> str | None:
        try:
            import wandb
            # console="off": a worker has no console worth recording; the run's train.log is copied in
            # as its output.log when it finishes
            self.run = wandb.init(**kwargs, reinit="finish_previous",
                                  settings=wandb.Settings(init_timeout=60, silent=True, console="off"))
        except Exception as e:  # no network, no key, a full disk...: the local files are the record
            self.run = None
            return f"W&B could not start ({type(e).__name__}: {_first_line(e)}); logging to local files only"
        return None

    def call(self, what: str, *args) -> str | None:
        """log(row, step) | summary(scalars) | table(key, columns, rows) | images({key: path}) | finish(code)."""
        if self.run is None:
            return None
        try:
            getattr(self, "_" + what)(*args)
        except Exception as e:
            self.run = None
            return f"W&B failed to {what} ({_first_line(e)}); logging to local files only from now on"
        return None

    def _log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def _summary(self, scalars: dict) -> None:
        self.run.summary.update(scalars)

    def _table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import wandb
        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def _images(self, images: dict[str, str]) -> None:
        import wandb
        self.run.log({key: wandb.Image(path) for key, path in images.items()})

    def _finish(self, exit_code: int, log_file: str | None = None) -> None:
        run, self.run = self.run, None
        if log_file and os.path.isfile(log_file):  # the run's console record, as W&B names it
            shutil.copyfile(log_file, os.path.join(run.dir, "output.log"))
        run.finish(exit_code=exit_code)


def wanted(argv: list[str]) -> bool:
    """Whether a command may log to W&B (a worker is worth starting): not with wandb.mode=disabled
    given, or $WANDB_MODE=disabled / $WANDB_DISABLED and no wandb.mode given; not for --help."""
    if any(a in ("-h", "--help", "--cfg", "-c", "--info") or a.startswith("--cfg") for a in argv):
        return False
    modes = [a.split("=", 1)[1] for a in argv if a.startswith("wandb.mode=")]
    if modes and modes[-1] not in ("null", ""):
        return modes[-1] != "disabled"
    return _env_mode() != "disabled"


def _env_mode() -> str:
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    return os.environ.get("WANDB_MODE", "").lower()


def start_worker(argv: list[str]) -> None:
    """Start the W&B worker where the command may log to W&B and there is a core for it."""
    global _worker
    if _worker is None and cores() > 1 and wanted(argv):
        try:
            _worker = subprocess.Popen([sys.executable, "-m", "nplm.wandb_log"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        except OSError as e:
            log.warning("no W&B worker (%s): W&B starts in this process", e)


class Client:
    """One run's W&B record, in the worker if there is one (else a Session here). Sends go on
    without waiting; warnings the worker sends back are logged as they come; `finish` waits until
    the W&B run is finished."""

    def __init__(self, kwargs: dict):
        global _worker
        self.local, self.worker = None, _worker
        if self.worker is not None and self.worker.poll() is not None:
            self.worker = _worker = None  # it died
        if self.worker is None:
            self.local = Session()
            self._warn(self.local.init(kwargs))
        else:
            self._send(["init", kwargs])

    def call(self, what: str, *args) -> None:
        if self.local is not None:
            self._warn(self.local.call(what, *args))
        else:
            self._send(["call", what, *args])
            self._read(block=False)

    def finish(self, exit_code: int, log_file: str | None = None) -> None:
        """Finish the W&B run (its console record: `log_file`, the run's train.log, if there is one)."""
        if self.local is not None:
            self._warn(self.local.call("finish", exit_code, log_file))
        elif self.worker is not None:
            self._send(["finish", exit_code, log_file])
            self._read(block=True)

    def _send(self, message: list) -> None:
        global _worker
        if self.worker is None:
            return
        try:
            self.worker.stdin.write(json.dumps(message) + "\n")
            self.worker.stdin.flush()
        except (OSError, ValueError) as e:
            log.warning("the W&B worker failed (%s); logging to local files only", e)
            self.worker = _worker = None

    def _read(self, block: bool) -> None:
        """Log the worker's warnings; with block, until it says the run is finished."""
        global _worker
        while self.worker is not None:
            if not block and not select.select([self.worker.stdout], [], [], 0)[0]:
                return
            line = self.worker.stdout.readline()
            if not line:
                log.warning("the W&B worker exited; logging to local files only")
                self.worker = _worker = None
                return
            kind, text = json.loads(line)
            self._warn(text)
            if kind == "finished":
                return

    @staticmethod
    def _warn(text: str | None) -> None:
        if text:
            log.warning(text)


def _serve() -> None:
    """The worker: import wandb and start its service at once, then carry out each message read
    from stdin; answer warnings as they happen and ["finished", None] after each finish. When stdin
    closes (the training process ended), a run still open is finished as failed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    os.nice(10)  # the training process's start-up (importing torch) comes first; this fills the idle core
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the channel
    session = Session()
    try:
        import wandb
        wandb.setup()
        wandb.Table(columns=["a"], data=[["b"]])  # their first use imports what they need
        for module in WARM:  # what a run's first start imports (~0.6 s), and images
            importlib.import_module(module)
    except Exception:  # noqa: BLE001, S110  (Session.init reports what is wrong)
        pass

    def answer(kind: str, text: str | None) -> None:
        if text or kind == "finished":
            out.write(json.dumps([kind, text]) + "\n")
            out.flush()
    for line in sys.stdin:
        message = json.loads(line)
        if message[0] == "init":
            answer("warning", session.init(message[1]))
        elif message[0] == "call":
            answer("warning", session.call(*message[1:]))
        elif message[0] == "finish":
            answer("finished", session.call("finish", *message[1:]))
    session.call("finish", 1)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


if __name__ == "__main__":
    _serve()
