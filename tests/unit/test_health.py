"""Properties of the health state machine, the check loop's pacing, and crash loops."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.health import (
    CHECKED,
    LIFECYCLE,
    CheckResult,
    CrashLoop,
    Health,
    HealthLog,
    Thresholds,
    decide,
    run_checks,
)
from meshgate.registry.base import InstanceState as S
from meshgate.resilience import BackoffPolicy

pytestmark = pytest.mark.timeout(60)

thresholds = st.builds(Thresholds, st.integers(1, 6), st.integers(1, 6))
outcomes = st.lists(st.booleans(), max_size=80)  # True: the check passed


class Checks:
    """Every check a HealthLog was told of, as its hook sees them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, service: str, ok: bool) -> None:
        self.seen.append((service, ok))


def make(t: Thresholds, state: S = S.STARTING) -> tuple[Health, HealthLog]:
    book = HealthLog(logging.getLogger("test.health"), on_check=Checks())
    h = Health("svc-1", "svc", t, book, clock=lambda: 1700000000.0)
    h.state = state
    return h, book


def feed(h: Health, ok: bool) -> S | None:
    return h.observe(None if ok else "boom", 0.001)


def tail_run(history: list[bool]) -> tuple[bool | None, int]:
    """The last outcome and how many times in a row it came."""
    if not history:
        return None, 0
    last = history[-1]
    n = len(list(itertools.takewhile(lambda o: o == last, reversed(history))))
    return last, n


# -- the check-driven moves ---------------------------------------------------------------------


@given(t=thresholds, seq=outcomes, start=st.sampled_from([S.STARTING, S.HEALTHY, S.UNHEALTHY]))
def test_never_healthy_without_healthy_after_passes_in_a_row(
    t: Thresholds, seq: list[bool], start: S
) -> None:
    h, _ = make(t, start)
    history: list[bool] = []
    for ok in seq:
        before = h.state
        moved = feed(h, ok)
        history.append(ok)
        last, run = tail_run(history)
        if moved is S.HEALTHY:
            assert before is not S.HEALTHY
            assert last is True and run >= t.healthy_after
        if moved is S.UNHEALTHY:
            assert before is not S.UNHEALTHY
            assert last is False and run >= t.unhealthy_after


@given(t=thresholds, seq=outcomes, start=st.sampled_from([S.STARTING, S.HEALTHY, S.UNHEALTHY]))
def test_enough_checks_in_a_row_always_decide(t: Thresholds, seq: list[bool], start: S) -> None:
    h, _ = make(t, start)
    history: list[bool] = []
    for ok in seq:
        feed(h, ok)
        history.append(ok)
        last, run = tail_run(history)
        if last is True and run >= t.healthy_after:
            assert h.state is S.HEALTHY
        if last is False and run >= t.unhealthy_after:
            assert h.state is S.UNHEALTHY


@given(t=thresholds, seq=outcomes)
def test_healthy_and_unhealthy_change_only_at_a_threshold(t: Thresholds, seq: list[bool]) -> None:
    """Hysteresis: between two moves, no single check against the state moves it early."""
    h, _ = make(t)
    for ok in seq:
        before, ok_before, fail_before = h.state, h.ok_streak, h.fail_streak
        moved = feed(h, ok)
        if moved is None:
            assert h.state is before
            continue
        assert moved is h.state is not before
        if ok:
            assert ok_before + 1 == h.ok_streak >= t.healthy_after
        else:
            assert fail_before + 1 == h.fail_streak >= t.unhealthy_after


@given(t=thresholds, seq=outcomes)
def test_every_move_is_logged_counted_and_in_the_lifecycle(t: Thresholds, seq: list[bool]) -> None:
    h, book = make(t)
    moves = 0
    for ok in seq:
        moves += feed(h, ok) is not None
    assert sum(book.transitions.values()) == moves
    for old, new in book.transitions:
        assert S(new) in LIFECYCLE[S(old)]
    hook = book.on_check
    assert isinstance(hook, Checks)
    assert hook.seen == [("svc", ok) for ok in seq]


@given(
    t=thresholds,
    seq=outcomes,
    state=st.sampled_from([S.DRAINING, S.STOPPED, S.FAILED]),
)
def test_checks_never_move_an_instance_its_owner_took_out(
    t: Thresholds, seq: list[bool], state: S
) -> None:
    h, book = make(t, state)
    for ok in seq:
        assert feed(h, ok) is None
    assert h.state is state
    assert not book.transitions


@given(
    state=st.sampled_from(list(S)),
    ok_streak=st.integers(0, 10),
    fail_streak=st.integers(0, 10),
    t=thresholds,
)
def test_decide_stays_within_the_checked_states(
    state: S, ok_streak: int, fail_streak: int, t: Thresholds
) -> None:
    new = decide(state, ok_streak, fail_streak, t)
    if state not in CHECKED:
        assert new is None
    elif new is not None:
        assert new in CHECKED and new is not state and new in LIFECYCLE[state]


def test_first_checks_of_a_new_instance() -> None:
    # Like a registered HTTP service: starting until its checks say otherwise.
    h, book = make(Thresholds(healthy_after=2, unhealthy_after=3))
    assert feed(h, True) is None and h.state is S.STARTING
    assert feed(h, True) is S.HEALTHY
    h2, _ = make(Thresholds(healthy_after=2, unhealthy_after=3))
    assert [feed(h2, False) for _ in range(3)] == [None, None, S.UNHEALTHY]
    assert book.transitions == {("starting", "healthy"): 1}


# -- the owner's moves --------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_moves_outside_the_lifecycle_are_refused(old: S, new: S) -> None:
    h, book = make(Thresholds(), old)
    if new is old:
        assert h.move(new, "again") is False
        assert not book.transitions
    elif new in LIFECYCLE[old]:
        assert h.move(new, "why") is True
        assert h.state is new
        assert book.transitions == {(old.value, new.value): 1}
    else:
        with pytest.raises(ValueError, match=f"from {old.value} to {new.value}"):
            h.move(new, "why")
        assert h.state is old
        assert not book.transitions


def test_the_lifecycle_is_the_vocabulary() -> None:
    # starting -> healthy <-> unhealthy -> draining -> stopped; failed after a crash loop
    for a, b in [
        (S.STARTING, S.HEALTHY),
        (S.HEALTHY, S.UNHEALTHY),
        (S.UNHEALTHY, S.HEALTHY),
        (S.UNHEALTHY, S.DRAINING),
        (S.HEALTHY, S.DRAINING),
        (S.DRAINING, S.STOPPED),
        (S.STOPPED, S.STARTING),
        (S.STOPPED, S.FAILED),
    ]:
        assert b in LIFECYCLE[a]
    assert set(LIFECYCLE) == set(S)
    # Nothing comes back from failed but the gateway's own stop; draining only ends.
    assert LIFECYCLE[S.FAILED] == {S.STOPPED}
    assert LIFECYCLE[S.DRAINING] == {S.STOPPED}


def test_a_new_process_starts_its_streaks_and_record_over() -> None:
    h, _ = make(Thresholds(healthy_after=1, unhealthy_after=3), S.HEALTHY)
    feed(h, False)
    feed(h, False)
    assert h.fail_streak == 2 and h.last is not None
    h.move(S.STOPPED, "exited")
    h.move(S.STARTING, "restart 1")
    assert (h.ok_streak, h.fail_streak) == (0, 0)
    assert h.last_view() is None
    h.move(S.HEALTHY, "verified")
    feed(h, False)
    assert h.state is S.HEALTHY  # one failure of three, not three


def test_the_check_record_is_the_api_view() -> None:
    h, _ = make(Thresholds())
    h.observe("HTTP 503 from /health", 0.0123456)
    assert h.last_view() == {
        "ok": False,
        "error": "HTTP 503 from /health",
        "latency_ms": 12.346,
        "at": 1700000000.0,
    }
    assert CheckResult(True, None, 1.0, 2.0).view()["ok"] is True


def test_log_lines_tell_transitions_and_the_first_failure_of_a_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h, _ = make(Thresholds(healthy_after=1, unhealthy_after=2), S.HEALTHY)
    with caplog.at_level(logging.DEBUG, logger="test.health"):
        for ok in (False, False, False, True):
            feed(h, ok)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "svc-1 health check failed (1 in a row): boom"),
        (logging.DEBUG, "svc-1 health check failed (2 in a row): boom"),
        (logging.WARNING, "svc-1: healthy -> unhealthy (2 failed: boom)"),
        (logging.DEBUG, "svc-1 health check failed (3 in a row): boom"),
        (logging.INFO, "svc-1: unhealthy -> healthy (1 check passed)"),
    ]


def test_giving_up_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    h, book = make(Thresholds(), S.STOPPED)
    with caplog.at_level(logging.INFO, logger="test.health"):
        h.move(S.FAILED, "5 failures in a row; giving up: exited with code 1 after 0.1s")
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("svc-1: stopped -> failed (5 failures in a row")
    assert book.transitions == {("stopped", "failed"): 1}


def test_thresholds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(healthy_after=0)


# -- the check loop -----------------------------------------------------------------------------


class Done(Exception):
    """Ends a check loop in a test."""


class FakeTime:
    """A monotonic clock and a sleep that only advance it, ending the loop after `sleeps`."""

    def __init__(self, sleeps: int, probe_s: float) -> None:
        self.now = 100.0
        self.left = sleeps
        self.probe_s = probe_s
        self.slept: list[float] = []
        self.events: list[str] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.events.append("sleep")
        self.slept.append(seconds)
        self.now += seconds
        if not self.left:
            raise Done
        self.left -= 1

    async def probe(self, results: list[str | None]) -> str | None:
        self.events.append("probe")
        self.now += self.probe_s
        return results.pop(0)


@pytest.mark.parametrize("first_at_once", [True, False])
def test_run_checks_paces_probes_and_reports_each(first_at_once: bool) -> None:
    t = FakeTime(sleeps=3, probe_s=0.25)
    results: list[str | None] = [None, "down", "down", None]
    h, _ = make(Thresholds(healthy_after=1, unhealthy_after=2))
    heard: list[tuple[bool, float, S | None]] = []

    def on_result(r: CheckResult, new: S | None) -> None:
        heard.append((r.ok, r.latency_ms, new))

    async def main() -> None:
        with pytest.raises(Done):
            await run_checks(
                h,
                lambda: t.probe(results),
                interval_s=10.0,
                rng=random.Random(7),
                on_result=on_result,
                first_at_once=first_at_once,
                sleep=t.sleep,
                clock=t.clock,
            )

    asyncio.run(main())
    assert t.events[0] == ("probe" if first_at_once else "sleep")
    assert all(9.0 <= s <= 11.0 for s in t.slept)
    expected = [(True, 250.0, S.HEALTHY), (False, 250.0, None), (False, 250.0, S.UNHEALTHY)]
    assert heard[:3] == expected
    assert h.state is (S.HEALTHY if first_at_once else S.UNHEALTHY)


# -- crash loops --------------------------------------------------------------------------------


def crash_loop(max_failures: int, base: float = 0.1, cap: float = 30.0) -> CrashLoop:
    return CrashLoop(
        max_failures=max_failures,
        stable_after_s=30.0,
        backoff=BackoffPolicy(base, cap),
        rng=random.Random(1),
    )


runs = st.lists(st.one_of(st.none(), st.floats(0, 100)), max_size=40)


@given(max_failures=st.integers(1, 8), ran=runs)
def test_crash_loop_restarts_at_once_first_backs_off_after_gives_up_at_max(
    max_failures: int, ran: list[float | None]
) -> None:
    loop = crash_loop(max_failures)
    streak = 0
    for r in ran:
        delay = loop.ended(r)
        streak = 0 if r is not None and r >= 30.0 else streak + 1
        assert loop.failures == streak
        if streak >= max_failures:
            assert delay is None
            return
        assert delay is not None
        if streak <= 1:
            assert delay == 0.0  # the first failure of a streak waits for nothing
        else:
            assert 0.0 <= delay <= min(30.0, 0.1 * 2 ** (streak - 2))


def test_crash_loop_counts_an_unstable_run_after_a_stable_one_as_a_first_failure() -> None:
    loop = crash_loop(3, base=100.0, cap=100.0)
    assert loop.ended(45.0) == 0.0  # ran long enough: not a crash loop
    assert loop.ended(1.0) == 0.0  # the first early exit
    second = loop.ended(None)  # a failed start right after it
    assert second is not None and second > 0.0
    assert loop.ended(2.0) is None
    assert loop.failures == 3
