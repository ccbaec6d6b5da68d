"""How edgeseg's modules talk: each has `log = logging.getLogger(__name__)`; the CLI configures the "edgeseg"
logger once (cli.main) and `-q` / `-v` set how much it says. A program that imports edgeseg as a library and
configures nothing hears only warnings, as with any library.

A command that runs other stages as steps of its own (build, bench) wraps each call in `nested(indent)`: what the
stage logs meanwhile is shown indented under the step line, as it was when stages took a `log` callable."""

from __future__ import annotations

import contextlib
import logging
import sys
from contextvars import ContextVar
from typing import Iterator, TextIO

ROOT = "edgeseg"
QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}

# The indent of information lines logged now (in this thread or task): set by nested(), read when a line is shown.
_indent: ContextVar[str] = ContextVar("edgeseg_log_indent", default="")


@contextlib.contextmanager
def nested(indent: str) -> Iterator[None]:
    """Show the information lines logged inside the block indented by `indent` more (warnings stay as they are)."""
    token = _indent.set(_indent.get() + indent)
    try:
        yield
    finally:
        _indent.reset(token)


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
        return _indent.get() + message


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
