"""edgeseg/bench/latency.py: the statistics of a set of samples, when measuring stops, and the round-robin order
of side-by-side timing. A stand-in clock that the timed call advances gives exact samples; nothing is timed."""

import math

import pytest

from edgeseg.bench import latency
from edgeseg.bench.latency import measure, measure_interleaved, stats_from_samples


def test_statistics_of_samples_worked_out_by_hand():
    stats = stats_from_samples([4.0, 1.0, 10.0, 2.0, 3.0])
    # Sorted 1 2 3 4 10: median 3; p90 at rank 0.9 * 4 = 3.6 -> 4 + 0.6 * (10 - 4) = 7.6; p99 -> 4 + 0.96 * 6;
    # population std: deviations from 4 are -3 -2 -1 0 6, squares sum to 50, / 5 = 10.
    assert stats.to_dict() == {"runs": 5, "mean_ms": 4.0, "p50_ms": 3.0, "p90_ms": pytest.approx(7.6),
                               "p99_ms": pytest.approx(9.76), "std_ms": pytest.approx(math.sqrt(10)),
                               "min_ms": 1.0, "max_ms": 10.0}


class SteppingClock:
    """perf_counter for latency.py that only moves when a timed call moves it."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def perf_counter(self):
        return self.now

    def call(self, name: str, seconds: float):
        def run():
            self.calls.append(name)
            self.now += seconds
        return run


@pytest.fixture()
def clock(monkeypatch):
    clock = SteppingClock()
    monkeypatch.setattr(latency, "time", clock)
    return clock


def test_measure_runs_until_both_the_count_and_the_time_are_reached(clock):
    # 0.125 s per call (exact in binary): after warm-up, 4 runs reach min_seconds = 0.5.
    stats = measure(clock.call("m", 0.125), warmup=2, min_runs=3, min_seconds=0.5)
    assert len(clock.calls) == 2 + 4 and stats.runs == 4
    assert stats.p50_ms == stats.min_ms == stats.max_ms == 125.0 and stats.std_ms == 0.0
    clock.calls.clear()
    assert measure(clock.call("m", 0.125), warmup=0, min_runs=7, min_seconds=0.5).runs == 7  # the count decides
    assert measure(clock.call("m", 0.125), warmup=0, min_runs=1, min_seconds=60, max_runs=5).runs == 5  # the cap


def test_interleaved_timing_alternates_the_models_round_by_round(clock):
    stats = measure_interleaved({"a": clock.call("a", 0.125), "b": clock.call("b", 0.25)}, warmup=1, rounds=2,
                                per_round=2)
    assert clock.calls == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert stats["a"].runs == stats["b"].runs == 4  # the warm-up calls are not samples
    assert stats["a"].p50_ms == 125.0 and stats["b"].p50_ms == 250.0


def test_shuffled_interleaving_changes_the_order_but_times_every_model_alike(clock):
    import random

    calls = {name: clock.call(name, 0.125 * (index + 1)) for index, name in enumerate("abc")}
    stats = measure_interleaved(calls, warmup=0, rounds=6, per_round=1, shuffle=random.Random(0))
    rounds = [clock.calls[start:start + 3] for start in range(0, 18, 3)]
    assert all(sorted(order) == ["a", "b", "c"] for order in rounds)  # every model once per round
    assert len({tuple(order) for order in rounds}) > 1  # in more than one order
    assert [stats[name].p50_ms for name in "abc"] == [125.0, 250.0, 375.0]
