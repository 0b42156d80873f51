"""For the tests only: holds a process of the real command at given lines of its log, so that a test
acts (sends a signal, reads what the run has written, kills it) at a known point of the run, however
fast or slow the machine is: never before training began, never after the run ended.

Python imports this file in every process started with this folder on PYTHONPATH (tests/holds.py
starts them so); it does nothing unless NPLM_TEST_HOLD is set, to JSON [gate folder, [[pattern, n],
...]]. The holds are taken in turn: hold i is the n-th message of the "nplm" logger in which the
regular expression `pattern` is found. There, before the message is written anywhere, the process
writes <gate folder>/held-<i> (the message) and waits until <gate folder>/go-<i> exists or a signal
that the run handles (SIGINT, SIGTERM, SIGUSR2) has come; the signal goes on to the run's own
handler as it would have without the hold.
"""
import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path


class _Hold(logging.Filter):
    def __init__(self, gate: Path, holds: list):
        super().__init__()
        self.gate, self.holds, self.i, self.seen = gate, holds, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.i < len(self.holds):
            pattern, n = self.holds[self.i]
            message = record.getMessage()
            if re.search(pattern, message):
                self.seen += 1
                if self.seen == n:
                    self.i, self.seen = self.i + 1, 0
                    self._wait(self.i - 1, message)
        return True

    def _wait(self, i: int, message: str) -> None:
        came, old = [], {}
        main = threading.current_thread() is threading.main_thread()  # where signals are handled
        for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)) if main else ():
            handler = signal.getsignal(s) if s is not None else None
            if callable(handler):  # the run's handler: it still gets the signal, after the hold notes it
                old[s] = handler
                signal.signal(s, lambda signum, frame, h=handler: (came.append(signum), h(signum, frame)))
        try:
            (self.gate / f"held-{i}.tmp").write_text(message)
            os.replace(self.gate / f"held-{i}.tmp", self.gate / f"held-{i}")  # whole when it appears
            while not came and not (self.gate / f"go-{i}").exists():
                time.sleep(0.01)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


if os.environ.get("NPLM_TEST_HOLD"):
    _gate, _holds = json.loads(os.environ["NPLM_TEST_HOLD"])
    logging.getLogger("nplm").addFilter(_Hold(Path(_gate), _holds))
