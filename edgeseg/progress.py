"""Progress of long work (evaluation, calibration, the INT8 budget loop, latency timing): a rich bar on a
terminal, otherwise a log line at least every INTERVAL_S seconds, so a CI log or a redirected run shows the
work is alive. Both go through the caller's logger at INFO: `-q` silences them, and so does a library user who
configured no logging. Under torchrun only rank 0 reports: N bars fighting over one terminal tell nobody anything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
INTERVAL_S = 10.0
log = logging.getLogger(__name__)
now = time.monotonic  # the clock progress lines read (a test drives a fake one)


def make_progress(transient: bool = False) -> Progress:
    """A rich bar on stderr (stdout is for results: `edgeseg eval ... > table.txt` must not catch a bar), shown only
    when stderr is a terminal, on rank 0."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        transient=transient, disable=not sys.stderr.isatty() or not _main_rank(), console=Console(stderr=True),
    )


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


class ProgressLines:
    """Counts finished items and logs "what: done/total (elapsed, time left)" when INTERVAL_S seconds have passed
    since the last line (or the start)."""

    def __init__(self, description: str, total: int | None = None, logger: logging.Logger | None = None,
                 interval: float = INTERVAL_S, clock: Callable[[], float] | None = None) -> None:
        self.description, self.total, self.interval = description, total, interval
        self.logger = logger or log
        self.clock = clock or now
        self.done = 0
        self.started = self.last = self.clock()
        self.enabled = self.logger.isEnabledFor(logging.INFO) and _main_rank()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        moment = self.clock()
        if moment - self.last >= self.interval:
            self.last = moment
            self.logger.info(self.line(moment))

    def line(self, moment: float) -> str:
        elapsed = moment - self.started
        if self.total:
            left = elapsed / max(1, self.done) * max(0, self.total - self.done)
            return (f"{self.description}: {self.done}/{self.total} ({elapsed:.0f} s, "
                    f"about {left:.0f} s left)")
        return f"{self.description}: {self.done} done ({elapsed:.0f} s)"


def track(items: Iterable[T], description: str, total: int | None = None,
          logger: logging.Logger | None = None) -> Iterator[T]:
    """Yield `items`, showing progress: a transient bar on a terminal, lines (ProgressLines) elsewhere."""
    logger = logger or log
    if not (logger.isEnabledFor(logging.INFO) and _main_rank()):
        yield from items
        return
    if sys.stderr.isatty():
        with make_progress(transient=True) as progress:
            task = progress.add_task(description, total=total, info="")
            for item in items:
                yield item
                progress.advance(task)
        return
    lines = ProgressLines(description, total, logger)
    for item in items:
        yield item
        lines.advance()
