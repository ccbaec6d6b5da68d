"""What one edgeseg module logs, as records, whatever the "edgeseg" logger's configuration (a CLI test may have
set it to WARNING or stopped propagation, so pytest's caplog would miss them)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator


class LogLines(logging.Handler):
    """The records of one logger, in order; `on_line(message)` may act on each (raise to stop the caller there)."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.on_line = on_line

    @property
    def lines(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.on_line is not None:
            self.on_line(record.getMessage())


@contextlib.contextmanager
def captured(name: str, on_line: Callable[[str], None] | None = None) -> Iterator[LogLines]:
    """The records of logger `name` and its children while the block runs (`on_line` also gets each message)."""
    logger = logging.getLogger(name)
    handler, level = LogLines(on_line), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
