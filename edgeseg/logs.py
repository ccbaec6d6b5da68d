"""How edgeseg's modules talk: each has `log = logging.getLogger(__name__)`; the CLI configures the "edgeseg"
logger once (cli.main) and `-q` / `-v` set how much it says. A program that imports edgeseg as a library and
configures nothing hears only warnings, as with any library."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOT = "edgeseg"
QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a redirected or captured stream too), not the one at start."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:  # logging.StreamHandler.__init__ assigns it; the property always wins
        pass


class _Format(logging.Formatter):
    """Information and progress as plain lines; warnings and errors in the CLI's one-line style."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"edgeseg: {record.levelname.lower()}: {message}"
        return message


def configure(verbosity: int = NORMAL) -> None:
    """Send the "edgeseg" loggers to stderr at the level `verbosity` chooses; calling it again only changes the
    level (one handler, however many times the CLI runs in one process)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Format())
        logger.addHandler(handler)
        logger.propagate = False  # a library that configures the root logger must not print our lines twice
    logger.setLevel(LEVELS[max(QUIET, min(VERBOSE, verbosity))])
