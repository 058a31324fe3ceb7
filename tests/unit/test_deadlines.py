"""Deadlines: keys due at their times, whatever order they were set, moved or dropped in."""

from __future__ import annotations

import random

from meshgate.services.deadlines import Deadlines


def test_keys_come_due_at_their_latest_time_once() -> None:
    d: Deadlines[str] = Deadlines()
    d.set("a", 5)
    d.set("b", 3)
    d.set("c", 8)
    d.set("a", 9)  # later: its old entry comes up at 5 and is queued again
    d.set("c", 1)  # earlier: a new entry, the old one skipped
    d.discard("b")
    assert d.due(0.5) == []
    assert d.due(1) == ["c"]
    assert d.due(8.9) == []
    assert d.due(9) == ["a"]
    assert d.due(100) == [] and len(d) == 0


def test_against_a_scan_of_every_key() -> None:
    """Random sets, moves, discards and clock steps: `due` says what a scan would."""
    rng = random.Random(7)
    d: Deadlines[int] = Deadlines()
    times: dict[int, float] = {}
    now = 0.0
    for _ in range(5000):
        op = rng.random()
        key = rng.randrange(200)
        if op < 0.6:
            at = now + rng.uniform(-1, 20)
            d.set(key, at)
            times[key] = at
        elif op < 0.7:
            d.discard(key)
            times.pop(key, None)
        else:
            now += rng.uniform(0, 3)
            expected = sorted(k for k, at in times.items() if at <= now)
            assert sorted(d.due(now)) == expected
            for k in expected:
                del times[k]
        assert len(d) == len(times)
