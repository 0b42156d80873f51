"""A sweep on a SLURM cluster (+launcher=slurm), in the launching process: submitit polls the jobs'
states with `sacct`, and on a cluster without accounting each poll fails and logs a warning
("Bypassing sacct error ..."). `quiet_sacct()` lets the first through, with a note saying what it
means, and drops the repeats; the jobs' ends are still seen (submitit reads each job's result file).
"""
from __future__ import annotations

import logging

NOTE = ("(sacct fails: SLURM accounting is probably off; submitit sees each job end from its result "
        "file, so this is harmless; watch the jobs with squeue. Further sacct errors are not shown)")


class SacctOnce(logging.Filter):
    """Passes submitit's first "Bypassing sacct error" warning, with NOTE, and none after it."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = f"{record.getMessage()} {NOTE}", None
        return True


def quiet_sacct() -> None:
    """Install SacctOnce on submitit's logger (once; a filter on the logger also holds the copies
    that propagate to Hydra's handlers)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, SacctOnce) for f in logger.filters):
        logger.addFilter(SacctOnce())
