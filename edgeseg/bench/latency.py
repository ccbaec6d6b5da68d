"""Latency measurement: warm-up, then repeated runs until both a minimum count and a minimum time are reached.

Statistics are of wall-clock milliseconds per call (time.perf_counter); the median (p50) is the figure to quote
on shared, noisy machines.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from edgeseg.progress import ProgressLines

log = logging.getLogger(__name__)

# How a build times its models side by side (report.py, cpu_variants.py), as its reports name it: measure_interleaved
# with shuffle=shuffled_rounds().
SIDE_BY_SIDE_METHOD = "interleaved rounds in a new seeded random order each, batch 1, model only"


def shuffled_rounds() -> random.Random:
    """The round order a build's side-by-side timing uses: new each round, the same sequence every run (seed 0)."""
    return random.Random(0)


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def stats_from_samples(samples_ms: list[float]) -> LatencyStats:
    values = np.asarray(samples_ms, dtype=np.float64)
    return LatencyStats(runs=len(values), mean_ms=float(values.mean()), p50_ms=float(np.percentile(values, 50)),
                        p90_ms=float(np.percentile(values, 90)), p99_ms=float(np.percentile(values, 99)),
                        std_ms=float(values.std()), min_ms=float(values.min()), max_ms=float(values.max()))


def measure(call: Callable[[], object], warmup: int = 3, min_runs: int = 10, min_seconds: float = 2.0,
            max_runs: int = 1000) -> LatencyStats:
    for _ in range(warmup):
        call()
    samples = []
    progress = ProgressLines("latency", logger=log)
    started = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - started < min_seconds):
        begin = time.perf_counter()
        call()
        samples.append((time.perf_counter() - begin) * 1000)
        progress.advance()
    return stats_from_samples(samples)


def measure_interleaved(calls: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 10,
                        per_round: int = 3, shuffle: random.Random | None = None) -> dict[str, LatencyStats]:
    """Time several models side by side: round-robin A B C A B C ..., so machine drift hits all alike and
    their ratios stay meaningful on a noisy machine (`shuffle`: a new order every round, so no model always
    runs right after the same other one)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    progress = ProgressLines(f"latency rounds of {', '.join(calls)}", rounds, log)
    for _ in range(rounds):
        order = list(calls.items())
        if shuffle is not None:
            shuffle.shuffle(order)
        for name, call in order:
            for _ in range(per_round):
                begin = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - begin) * 1000)
        progress.advance()
    return {name: stats_from_samples(values) for name, values in samples.items()}


def time_runners_side_by_side(runners: dict[str, Any], rounds: int) -> dict[str, LatencyStats]:
    """SIDE_BY_SIDE_METHOD: model-only latency of runners (the Runner interface) on one zero batch of the first
    one's input size, in interleaved rounds of 2 calls each, every round in a new seeded random order."""
    first = next(iter(runners.values()))
    batch = np.zeros((1, 3, *first.preprocessing.input_size), np.float32)
    return measure_interleaved({name: (lambda runner=runner: runner.infer(batch)) for name, runner in runners.items()},
                               rounds=rounds, per_round=2, shuffle=shuffled_rounds())
