"""The ``reasonrec`` logger: quiet in library use (a NullHandler), plain lines on the console under the CLI.

Library code logs to ``logging.getLogger(__name__)``; ``console`` is what the ``reasonrec`` command (or a notebook
that wants the progress lines) calls. Ray Train workers get the driver's level (``worker``), and Ray forwards their
stderr to the driver's console.
"""
from __future__ import annotations

import logging
import sys

ROOT = "reasonrec"


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is at the time of each line, not at creation."""

    def __init__(self, to_stderr: bool = False):
        self.to_stderr = to_stderr
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def console(level: int = logging.INFO, to_stderr: bool = False) -> None:
    """Print the ``reasonrec`` log lines (messages only, as the command always printed them) at ``level``."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console(to_stderr))


def level() -> int:
    """The driver's effective level, to hand to Ray workers."""
    return logging.getLogger(ROOT).getEffectiveLevel()


def worker(level: int) -> None:
    """Inside a Ray worker: log at the driver's level to stderr (Ray shows it on the driver's console)."""
    if level <= logging.INFO:
        console(level, to_stderr=True)
        # Ray gives a worker's root logger a stderr handler of its own: propagating printed every line twice.
        logging.getLogger(ROOT).propagate = False
