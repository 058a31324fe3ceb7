"""Properties of the circuit breaker, backoff, retry budget and deadline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.resilience import (
    BackoffPolicy,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Deadline,
    RetryBudget,
    backoff_delay,
)

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(br: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (mypy would otherwise narrow the property)."""
    return br.state


# A policy whose failure-rate rule never fires, to test the consecutive rule alone.
NO_RATE = {"minimum_calls": 10**9}


@given(threshold=st.integers(1, 10), outcomes=st.lists(st.booleans(), max_size=60))
def test_breaker_opens_exactly_after_threshold_consecutive_failures(
    threshold: int, outcomes: list[bool]
) -> None:
    br = CircuitBreaker(BreakerPolicy(failure_threshold=threshold, **NO_RATE), clock=FakeClock())
    streak = 0
    for ok in outcomes:
        assert br.acquire()
        if ok:
            br.on_success()
            streak = 0
        else:
            br.on_failure()
            streak += 1
        if streak >= threshold:
            assert state(br) is BreakerState.OPEN
            return
        assert state(br) is BreakerState.CLOSED


def test_breaker_recovers_through_half_open() -> None:
    clock = FakeClock()
    moves: list[tuple[BreakerState, BreakerState]] = []
    br = CircuitBreaker(
        BreakerPolicy(failure_threshold=2, recovery_s=10, half_open_successes=2, **NO_RATE),
        clock=clock,
        on_transition=lambda a, b: moves.append((a, b)),
    )
    br.on_failure()
    br.on_failure()
    assert state(br) is BreakerState.OPEN
    assert not br.available()
    assert br.retry_after() == 10
    clock.now += 9.9
    assert state(br) is BreakerState.OPEN
    clock.now += 0.1
    assert state(br) is BreakerState.HALF_OPEN
    assert br.acquire()
    assert not br.available()  # one trial at a time
    br.on_success()
    assert state(br) is BreakerState.HALF_OPEN
    assert br.acquire()
    br.on_success()
    assert state(br) is BreakerState.CLOSED
    assert moves == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_failure_in_half_open_reopens_and_restarts_the_timer() -> None:
    clock = FakeClock()
    br = CircuitBreaker(BreakerPolicy(failure_threshold=1, recovery_s=5, **NO_RATE), clock=clock)
    br.on_failure()
    clock.now += 5
    assert br.acquire()
    br.on_failure()
    assert state(br) is BreakerState.OPEN
    clock.now += 4.9
    assert state(br) is BreakerState.OPEN
    clock.now += 0.1
    assert state(br) is BreakerState.HALF_OPEN


@given(max_calls=st.integers(1, 5))
def test_half_open_trials_are_bounded_and_abandon_frees_one(max_calls: int) -> None:
    clock = FakeClock()
    br = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, recovery_s=1, half_open_max_calls=max_calls, **NO_RATE),
        clock=clock,
    )
    br.on_failure()
    clock.now += 1
    admitted = sum(br.acquire() for _ in range(max_calls + 3))
    assert admitted == max_calls
    br.on_abandon()
    assert br.acquire()
    assert not br.acquire()


def test_failure_rate_opens_once_the_window_has_enough_calls() -> None:
    clock = FakeClock()
    br = CircuitBreaker(
        BreakerPolicy(failure_threshold=100, failure_rate=0.5, minimum_calls=10, window_s=10),
        clock=clock,
    )
    for i in range(9):  # alternate: 50% failures, never two in a row
        br.on_failure() if i % 2 else br.on_success()
    assert state(br) is BreakerState.CLOSED  # 9 calls < minimum
    br.on_failure()
    assert state(br) is BreakerState.OPEN


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = FakeClock()
    br = CircuitBreaker(
        BreakerPolicy(failure_threshold=100, failure_rate=0.5, minimum_calls=4, window_s=10),
        clock=clock,
    )
    br.on_failure()
    br.on_success()
    br.on_failure()
    clock.now += 11
    br.on_success()
    br.on_success()
    br.on_success()
    br.on_failure()
    assert state(br) is BreakerState.CLOSED  # 1 of 4 in the window


@given(
    attempt=st.integers(1, 80),
    base=st.floats(0, 1),
    cap=st.floats(0, 10),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_within_full_jitter_bounds(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    d = backoff_delay(attempt, BackoffPolicy(base, cap), random.Random(seed))
    assert 0 <= d <= min(cap, base * 2 ** (attempt - 1))


@given(ratio=st.floats(0, 1), min_per_s=st.floats(0, 5), requests=st.integers(0, 500))
def test_retry_budget_bounds_retries(ratio: float, min_per_s: float, requests: int) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio, min_per_s, window_s=10, clock=clock)
    for _ in range(requests):
        budget.record_request()
    spent = 0
    while budget.try_spend():
        spent += 1
        assert spent <= 10_000
    assert spent <= ratio * requests + min_per_s * 10 + 1e-9
    assert spent >= int(ratio * requests + min_per_s * 10) - 1


def test_retry_budget_refills_as_the_window_moves() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, 0.1, window_s=10, clock=clock)
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now += 11
    assert budget.try_spend()


@given(total=st.floats(0, 100), steps=st.lists(st.floats(0, 20), max_size=10))
def test_deadline_remaining_never_grows_and_ends_at_zero(total: float, steps: list[float]) -> None:
    clock = FakeClock()
    d = Deadline.after(total, clock=clock)
    last = d.remaining()
    assert last == pytest.approx(total)
    for s in steps:
        clock.now += s
        r = d.remaining()
        assert 0 <= r <= last
        assert d.expired == (r == 0)
        last = r
