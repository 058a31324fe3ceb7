"""Circuit breaker, backoff, retry budget and deadlines: pure logic, time from a clock.

Nothing here sleeps or does I/O; every class takes a `clock` so tests drive time directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

Clock = Callable[[], float]


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers (docs/architecture.md, "Vocabulary")."""

    failure_threshold: int = 5
    failure_rate: float = 0.5
    window_s: float = 30.0
    minimum_calls: int = 20
    recovery_s: float = 60.0
    half_open_successes: int = 2
    half_open_max_calls: int = 1


_BUCKETS = 10


class _Window:
    """Call and failure counts over a sliding window, in fixed time buckets (O(1) a call)."""

    def __init__(self, window_s: float) -> None:
        self._width = window_s / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._fails = [0] * _BUCKETS
        self._epoch = [0] * _BUCKETS

    def _slot(self, now: float) -> int:
        epoch = int(now / self._width)
        i = epoch % _BUCKETS
        if self._epoch[i] != epoch:
            self._epoch[i], self._calls[i], self._fails[i] = epoch, 0, 0
        return i

    def add(self, now: float, failed: bool) -> None:
        i = self._slot(now)
        self._calls[i] += 1
        self._fails[i] += failed

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now / self._width) - _BUCKETS + 1
        calls = fails = 0
        for i in range(_BUCKETS):
            if self._epoch[i] >= oldest:
                calls += self._calls[i]
                fails += self._fails[i]
        return calls, fails

    def clear(self) -> None:
        self._calls = [0] * _BUCKETS
        self._fails = [0] * _BUCKETS


class CircuitBreaker:
    """closed -> open after N consecutive failures or a failure rate over the window;
    open -> half_open after the recovery time; half_open -> closed after M successful trial
    calls, or back to open on any failure."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock = time.monotonic,
        on_transition: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trials = 0
        self._trial_successes = 0
        self._window = _Window(self.policy.window_s)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        if new is not BreakerState.CLOSED:
            self._trials = self._trial_successes = 0
        if new is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.clear()
        if self._on_transition is not None and old is not new:
            self._on_transition(old, new)

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.recovery_s
        ):
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.recovery_s - self._clock())

    def available(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._trials < self.policy.half_open_max_calls
        return False

    def acquire(self) -> bool:
        if not self.available():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._trials += 1
        return True

    def on_success(self, latency_s: float | None = None) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
            self._trial_successes += 1
            if self._trial_successes >= self.policy.half_open_successes:
                self._move(BreakerState.CLOSED)
            return
        self._consecutive = 0
        if state is BreakerState.CLOSED:
            self._window.add(self._clock(), False)

    def on_failure(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._move(BreakerState.OPEN)
            return
        if state is BreakerState.OPEN:
            return
        self._consecutive += 1
        now = self._clock()
        self._window.add(now, True)
        if self._consecutive >= self.policy.failure_threshold:
            self._move(BreakerState.OPEN)
            return
        calls, fails = self._window.totals(now)
        if calls >= self.policy.minimum_calls and fails / calls >= self.policy.failure_rate:
            self._move(BreakerState.OPEN)

    def on_abandon(self) -> None:
        """An admitted call ended without an outcome (cancelled): free its trial slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self._consecutive,
            "retry_after_s": round(self.retry_after(), 3),
        }


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = 0.05
    cap_s: float = 2.0


def backoff_delay(attempt: int, policy: BackoffPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(policy.cap_s, policy.base_s * 2 ** min(max(attempt, 1) - 1, 62))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    budget_ratio: float = 0.2
    budget_min_per_s: float = 10.0


class RetryBudget:
    """Bounds retries to `ratio` of the requests plus `min_per_s`, over a sliding window
    (the retry budgets of Finagle and Linkerd), so retries cannot multiply an outage."""

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        *,
        window_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self._clock = clock
        self._requests = _Window(window_s)
        self._retries = _Window(window_s)
        self._window_s = window_s

    def record_request(self) -> None:
        self._requests.add(self._clock(), False)

    def try_spend(self) -> bool:
        now = self._clock()
        requests, _ = self._requests.totals(now)
        retries, _ = self._retries.totals(now)
        allowed = self.ratio * requests + self.min_per_s * self._window_s
        if retries + 1 > allowed:
            return False
        self._retries.add(now, False)
        return True


class Deadline:
    """An absolute point in time by which a call must finish."""

    __slots__ = ("_clock", "at")

    def __init__(self, at: float, *, clock: Clock = time.monotonic) -> None:
        self.at = at
        self._clock = clock

    @classmethod
    def after(cls, seconds: float, *, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock=clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self.at


class Signal:
    """Wakes every waiter when something changed (an instance's state, a freed slot)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the next `notify`, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
