"""The rolling call window behind `/stats`: buckets rolled over by an injected clock, quantiles
against known distributions, the error rate by the metrics' own outcomes, bounded memory."""

from __future__ import annotations

import math
import random

import pytest

from meshgate.observability.metrics import FAILED_OUTCOMES, OUTCOMES
from meshgate.observability.window import BINS, EDGES, CallWindow, bin_ms, bin_of

T0 = 1_800_000_000.0  # a bucket boundary for 10 s buckets


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_calls_land_in_the_bucket_of_their_time_and_roll_over() -> None:
    clock = Clock()
    w = CallWindow(10, 3, clock=clock)
    w.record("a", "ok", 0.001)
    clock.now = T0 + 9.999
    w.record("a", "error", 0.002)
    clock.now = T0 + 10
    w.record("a", "ok", 0.003)
    s = w.summary(30)["services"]["a"]
    assert [(b["t"], b["calls"], b["errors"]) for b in s["series"]] == [
        (T0 - 10, 0, 0),
        (T0, 2, 1),
        (T0 + 10, 1, 0),
    ]
    assert (s["calls"], s["errors"]) == (3, 1)
    # Two buckets on, the first one's slot is used again: its calls are gone from the window.
    clock.now = T0 + 30
    w.record("a", "ok", 0.004)
    s = w.summary(30)["services"]["a"]
    assert [(b["t"], b["calls"]) for b in s["series"]] == [
        (T0 + 10, 1),
        (T0 + 20, 0),
        (T0 + 30, 1),
    ]
    assert s["calls"] == 2 and s["errors"] == 0
    # A shorter window is the newest buckets only.
    short = w.summary(10)
    assert short["window_s"] == 10
    assert [b["t"] for b in short["services"]["a"]["series"]] == [T0 + 30]


def test_a_slot_not_written_since_it_came_round_reads_as_empty() -> None:
    clock = Clock()
    w = CallWindow(10, 3, clock=clock)
    w.record("a", "ok", 0.001)
    clock.now = T0 + 20
    w.record("a", "ok", 0.001)
    clock.now = T0 + 30  # the slot of T0 is the current bucket's, still holding T0's call
    s = w.summary(30)["services"]["a"]
    assert [b["calls"] for b in s["series"]] == [0, 1, 0]
    assert s["calls"] == 1
    clock.now = T0 + 50  # no call in the whole window: the service is forgotten...
    assert w.summary(30)["services"] == {}
    idle = w.summary(30, ["a"])["services"]["a"]  # ...and listed with zeros when named
    assert idle["calls"] == 0 and idle["p95_ms"] is None and idle["p50_ms"] is None


def test_window_s_is_rounded_up_to_whole_buckets_and_bounded() -> None:
    w = CallWindow(10, 30, clock=Clock())
    assert w.summary(15)["window_s"] == 20
    assert len(w.summary(15, ["x"])["services"]["x"]["series"]) == 2
    assert w.summary(300)["window_s"] == 300
    for bad in (9, 301, 0, -5):
        with pytest.raises(ValueError, match="between 10 and 300"):
            w.summary(bad)
    with pytest.raises(ValueError, match="at least 1"):
        CallWindow(0, 30)


def test_p95_and_p50_are_within_the_bins_bound_of_the_true_quantiles() -> None:
    clock = Clock()
    w = CallWindow(10, 30, clock=clock)
    rng = random.Random(3)
    values = [rng.lognormvariate(math.log(0.02), 1.0) for _ in range(20_000)]
    for i, seconds in enumerate(values):
        clock.now = T0 + i * 0.01  # 200 s of calls: the quantile is a merge of 20 buckets
        w.record("s", "ok", seconds)
    s = w.summary(300)["services"]["s"]
    assert s["calls"] == len(values)
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95)):
        exact = nearest_rank(values, q) * 1000
        assert abs(s[key] - exact) <= exact / 16, (key, s[key], exact)
    # Each bucket's own p95 is its own calls' quantile.
    first = next(b for b in s["series"] if b["calls"])
    exact = nearest_rank(values[:1000], 0.95) * 1000
    assert first["calls"] == 1000
    assert abs(first["p95_ms"] - exact) <= exact / 16


def test_a_uniform_spread_of_1_to_1000_ms_has_its_p95_near_950() -> None:
    w = CallWindow(clock=Clock())
    for ms in range(1, 1001):
        w.record("u", "ok", ms / 1000)
    s = w.summary(300)["services"]["u"]
    assert abs(s["p95_ms"] - 950) <= 950 / 16
    assert abs(s["p50_ms"] - 500) <= 500 / 16


def test_bins_cover_microseconds_to_minutes_and_their_values_stay_in_range() -> None:
    assert bin_of(0.0) == 0 and bin_of(0.9e-6) == 0
    assert bin_of(1e-6) == 1
    assert bin_of(1e6) == BINS - 1  # far past the last edge: the open-ended bin
    for b in range(1, len(EDGES)):
        assert EDGES[b - 1] * 1000 <= bin_ms(b) < EDGES[b] * 1000
        assert (EDGES[b] - EDGES[b - 1]) / EDGES[b - 1] <= 1 / 8 + 1e-12


def test_the_error_rate_counts_the_outcomes_the_metrics_call_failures() -> None:
    w = CallWindow(clock=Clock())
    for outcome in OUTCOMES:
        w.record("e", outcome, 0.01)
    s = w.summary(300)["services"]["e"]
    assert s["calls"] == len(OUTCOMES)
    assert s["errors"] == len(FAILED_OUTCOMES) == 4  # error, timeout, unavailable, crashed
    assert s["error_rate"] == round(4 / len(OUTCOMES), 4)
    assert w.summary(300, ["idle"])["services"]["idle"]["error_rate"] == 0.0


def test_calls_per_s_divides_by_the_time_counted() -> None:
    clock = Clock(T0 - 1000)
    w = CallWindow(10, 30, clock=clock)  # started long before the window
    clock.now = T0 + 5
    for _ in range(60):
        w.record("r", "ok", 0.001)
    # 30 buckets, the newest 5 s into its own: 295 s counted.
    assert w.summary(300)["services"]["r"]["calls_per_s"] == round(60 / 295, 3)
    # A window started 20 s ago has counted 20 s, not 300.
    clock = Clock(T0 - 15)
    young = CallWindow(10, 30, clock=clock)
    clock.now = T0 + 5
    for _ in range(60):
        young.record("r", "ok", 0.001)
    assert young.summary(300)["services"]["r"]["calls_per_s"] == 3.0


def test_named_services_with_no_call_are_listed_with_zeros() -> None:
    w = CallWindow(10, 30, clock=Clock())
    w.record("busy", "ok", 0.001)
    body = w.summary(60, ["idle", "busy"])
    assert list(body["services"]) == ["busy", "idle"]
    idle = body["services"]["idle"]
    assert idle["calls"] == 0 and idle["calls_per_s"] == 0.0 and idle["p95_ms"] is None
    assert [b["calls"] for b in idle["series"]] == [0] * 6
    assert body["bucket_s"] == 10 and body["now"] == T0


def test_memory_stays_bounded_over_many_buckets_and_services() -> None:
    clock = Clock()
    w = CallWindow(10, 30, clock=clock, max_services=50)
    for i in range(10_000):  # 10 000 buckets, 28 hours
        clock.now = T0 + i * 10
        w.record("steady", "ok", 0.001)
        w.record(f"gone-{i}", "ok", 0.001)  # a service seen once, then never again
    rings = w._rings
    assert len(rings) <= 50 and w.dropped == 0
    assert all(len(ring) == 30 for ring in rings.values())
    assert all(len(b.hist) == BINS for ring in rings.values() for b in ring)
    assert len(w._current) <= 50
    clock.now += 300  # the window passes with no call: every series goes at the next read
    assert w.summary(300)["services"] == {}
    assert w.services() == []


def test_services_past_the_bound_are_dropped_and_counted() -> None:
    w = CallWindow(10, 30, clock=Clock(), max_services=2)
    for name in ("a", "b", "c"):
        w.record(name, "ok", 0.001)
    assert w.services() == ["a", "b"] and w.dropped == 1


def test_a_clock_set_back_starts_the_earlier_bucket_again() -> None:
    clock = Clock(T0 + 100)
    w = CallWindow(10, 30, clock=clock)
    w.record("a", "ok", 0.001)
    clock.now = T0 + 50
    w.record("a", "ok", 0.001)
    s = w.summary(300)["services"]["a"]
    assert s["calls"] == 1  # the later bucket is in the future now: not read
    p95 = round(bin_ms(bin_of(0.001)), 3)
    assert s["series"][-1] == {"t": T0 + 50, "calls": 1, "errors": 0, "p95_ms": p95}
