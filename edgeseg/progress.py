"""One progress-bar helper so every long loop shows progress (and stays quiet when not on a terminal)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def make_progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        # Under torchrun only rank 0 draws: N bars fighting over one terminal tell nobody anything.
        transient=transient, disable=not sys.stderr.isatty() or os.environ.get("RANK", "0") != "0", console=None,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with make_progress(transient=True) as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)
