"""Instance health for every kind of instance: lifecycle states, check streaks, crash loops.

The supervisor (MCP server processes) and the service mesh (registered HTTP services) both keep
only their I/O here (the probe itself, the registry updates): a `Health` takes the result of
each check and decides the state, `run_checks` paces the checks, and `CrashLoop` decides how a
slot whose process ended starts again. The states are the vocabulary of `InstanceState`:

    starting -> healthy <-> unhealthy -> draining -> stopped
    starting -> unhealthy          (checks failed before any passed)
    stopped -> starting            (a slot starts its next process)
    stopped | starting -> failed   (a crash loop: the slot gives up)

Checks move an instance only between `starting`, `healthy` and `unhealthy`; its owner makes
every other move. Nothing here sleeps unless `run_checks` is awaited, and time comes from
injected clocks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshgate.observability.metrics import metrics
from meshgate.registry.base import InstanceState
from meshgate.resilience import BackoffPolicy, Clock, backoff_delay

S = InstanceState

LIFECYCLE: dict[InstanceState, frozenset[InstanceState]] = {
    S.STARTING: frozenset({S.HEALTHY, S.UNHEALTHY, S.STOPPED, S.FAILED}),
    S.HEALTHY: frozenset({S.UNHEALTHY, S.DRAINING, S.STOPPED}),
    S.UNHEALTHY: frozenset({S.HEALTHY, S.DRAINING, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset({S.STARTING, S.FAILED}),
    # A failed slot is not restarted; it shows `stopped` once the gateway stops.
    S.FAILED: frozenset({S.STOPPED}),
}
"""The moves an instance may make, from each state."""

_LEVELS = {S.UNHEALTHY: logging.WARNING, S.FAILED: logging.ERROR}  # of a move's log line

CHECKED = frozenset({S.STARTING, S.HEALTHY, S.UNHEALTHY})
"""The states that checks move an instance between."""

Probe = Callable[[], Awaitable[str | None]]
"""One health check: None when it passed, else why it failed."""
CheckHook = Callable[[str, bool], None]
"""Told of every check: (service, passed)."""


@dataclass(frozen=True)
class Thresholds:
    """How many checks in a row move an instance: passes to `healthy`, failures away from it."""

    healthy_after: int = 1
    unhealthy_after: int = 2

    def __post_init__(self) -> None:
        if self.healthy_after < 1 or self.unhealthy_after < 1:
            raise ValueError("thresholds must be at least 1")


@dataclass(frozen=True)
class CheckResult:
    """What one check found: the `last_health` / `last_check` record of the API."""

    ok: bool
    error: str | None
    latency_ms: float
    at: float  # wall-clock time, seconds since the epoch

    def view(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "latency_ms": self.latency_ms, "at": self.at}


def decide(
    state: InstanceState, ok_streak: int, fail_streak: int, thresholds: Thresholds
) -> InstanceState | None:
    """The state checks move an instance to, given its streaks; None to stay where it is."""
    if state in (S.STARTING, S.UNHEALTHY) and ok_streak >= thresholds.healthy_after:
        return S.HEALTHY
    if state in (S.STARTING, S.HEALTHY) and fail_streak >= thresholds.unhealthy_after:
        return S.UNHEALTHY
    return None


class HealthLog:
    """Where the health of a set of instances is told: log lines, transition counts, metrics.

    One per owner (the supervisor's pools, the service mesh); `transitions` counts every move
    as (from, to) state values.
    """

    def __init__(self, logger: logging.Logger, on_check: CheckHook | None = None) -> None:
        self.logger = logger
        self.on_check: CheckHook = on_check or metrics.health_check
        self.transitions: Counter[tuple[str, str]] = Counter()

    def moved(self, instance: str, old: InstanceState, new: InstanceState, why: str) -> None:
        self.transitions[(old.value, new.value)] += 1
        level = _LEVELS.get(new, logging.INFO)
        self.logger.log(level, "%s: %s -> %s (%s)", instance, old.value, new.value, why)

    def checked(self, instance: str, service: str, result: CheckResult, fail_streak: int) -> None:
        self.on_check(service, result.ok)
        if result.ok:
            return
        # The first failure of a streak is news; the rest are told by the transition line.
        level = logging.WARNING if fail_streak == 1 else logging.DEBUG
        self.logger.log(
            level, "%s health check failed (%d in a row): %s", instance, fail_streak, result.error
        )


class Health:
    """One instance's place in the lifecycle, moved by its checks and by its owner."""

    def __init__(
        self,
        instance: str,
        service: str,
        thresholds: Thresholds,
        log: HealthLog,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.instance = instance
        self.service = service
        self.thresholds = thresholds
        self.log = log
        self.clock = clock
        self.state = S.STARTING
        self.ok_streak = 0
        self.fail_streak = 0
        self.last: CheckResult | None = None

    def last_view(self) -> dict[str, Any] | None:
        return self.last.view() if self.last is not None else None

    def move(self, state: InstanceState, why: str) -> bool:
        """Move to `state` (False when already there). Entering `starting` begins a new
        process: streaks and the last check start over. Raises ValueError on a move the
        lifecycle does not have, which is a bug of the caller."""
        old = self.state
        if state is old:
            return False
        if state not in LIFECYCLE[old]:
            raise ValueError(f"{self.instance}: no move from {old.value} to {state.value}")
        self.state = state
        if state is S.STARTING:
            self.ok_streak = self.fail_streak = 0
            self.last = None
        self.log.moved(self.instance, old, state, why)
        return True

    def observe(self, error: str | None, latency_s: float) -> InstanceState | None:
        """Take one check's result (`error` None: it passed); the new state if it moved."""
        ok = error is None
        self.last = CheckResult(ok, error, round(latency_s * 1000, 3), self.clock())
        if ok:
            self.ok_streak, self.fail_streak = self.ok_streak + 1, 0
        else:
            self.ok_streak, self.fail_streak = 0, self.fail_streak + 1
        self.log.checked(self.instance, self.service, self.last, self.fail_streak)
        new = decide(self.state, self.ok_streak, self.fail_streak, self.thresholds)
        if new is None:
            return None
        n = self.ok_streak if ok else self.fail_streak
        why = f"{n} check{'s' if n != 1 else ''} passed" if ok else f"{n} failed: {error}"
        self.move(new, why)
        return new


def jittered(interval_s: float, rng: random.Random) -> float:
    """An interval spread by +-10 %, so that many instances' checks do not line up."""
    return interval_s * rng.uniform(0.9, 1.1)


async def run_checks(
    health: Health,
    probe: Probe,
    *,
    interval_s: float,
    rng: random.Random,
    on_result: Callable[[CheckResult, InstanceState | None], None],
    first_at_once: bool = True,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> None:
    """Check an instance every `interval_s` (jittered) until cancelled. `on_result` hears of
    each check: its record, and the state it moved the instance to (None: it stayed).
    `first_at_once=False` waits an interval first (for an instance just verified)."""
    if not first_at_once:
        await sleep(jittered(interval_s, rng))
    while True:
        started = clock()
        error = await probe()
        new = health.observe(error, clock() - started)
        assert health.last is not None
        on_result(health.last, new)
        await sleep(jittered(interval_s, rng))


class CrashLoop:
    """A slot's ends in a row that came too early, and what the next start waits for.

    A process that ran `stable_after_s` or longer ends the streak. The first failure of a
    streak (an early exit or a failed start) is restarted at once; each further one waits an
    exponential backoff with full jitter, one step per failure after the first; at
    `max_failures` in a row the slot gives up (`failed`).
    """

    def __init__(
        self,
        *,
        max_failures: int,
        stable_after_s: float,
        backoff: BackoffPolicy,
        rng: random.Random,
    ) -> None:
        self.max_failures = max_failures
        self.stable_after_s = stable_after_s
        self.backoff = backoff
        self.rng = rng
        self.failures = 0

    def ended(self, ran_s: float | None) -> float | None:
        """A process ended after `ran_s` seconds (None: it never became ready). The delay
        before the next start, or None to give up."""
        if ran_s is not None and ran_s >= self.stable_after_s:
            self.failures = 0
        else:
            self.failures += 1
        if self.failures >= self.max_failures:
            return None
        if self.failures <= 1:
            return 0.0
        return backoff_delay(self.failures - 1, self.backoff, self.rng)
