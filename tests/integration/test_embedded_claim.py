"""The embedded queue's claim: read in the claim's order through an index, never by sorting
every ready task, and in the same order as one query over queued and expired running tasks.

Real SQLite files in tmp_path. The order is checked against a hand-worked case and against the
single query the claim was before (`ONE_QUERY`), run on the same file before each claim.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshgate.tasks.embedded import EmbeddedQueue

pytestmark = pytest.mark.timeout(60)

# What the claim selected before it ran one query per status: the order it must keep.
ONE_QUERY = (
    "SELECT id FROM tasks WHERE status IN ('queued', 'running') AND visible_at <= ? "
    "AND target_name NOT IN ({marks}) ORDER BY priority DESC, created_at LIMIT ?"
)


class Clock:
    """A wall clock the test moves by hand: every task gets its own creation time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def _enqueue(q: EmbeddedQueue, clock: Clock, target: str, priority: int) -> str:
    clock.now += 1
    task_id, created = await q.enqueue(
        {"server": target, "tool": "echo", "arguments": {}},
        target,
        priority=priority,
        max_attempts=3,
        deadline_s=None,
        idempotency_key=None,
    )
    assert created
    return task_id


def _one_query(path: Path, now: float, n: int, skip: frozenset[str]) -> list[str]:
    """The ids the single query over both statuses picks, from a connection of its own."""
    db = sqlite3.connect(path)
    try:
        marks = ", ".join("?" * len(skip))
        rows = db.execute(ONE_QUERY.format(marks=marks), (now, *sorted(skip), n)).fetchall()
    finally:
        db.close()
    return [str(r[0]) for r in rows]


async def _claim(
    q: EmbeddedQueue, path: Path, clock: Clock, n: int, skip: frozenset[str] = frozenset()
) -> list[str]:
    """Claim as worker `w` and check the claim took what the single query picks."""
    expected = _one_query(path, clock.now, n, skip)
    claimed = [t["id"] for t in await q.claim("w", n, 30.0, skip)]
    assert claimed == expected
    return claimed


def test_the_claim_order_is_priority_then_age_over_queued_and_expired_tasks(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        path, clock = tmp_path / "tasks.sqlite3", Clock()
        q = EmbeddedQueue(path, clock=clock)
        a0 = await _enqueue(q, clock, "a", 0)
        b5 = await _enqueue(q, clock, "b", 5)
        a1 = await _enqueue(q, clock, "a", 1)
        c1 = await _enqueue(q, clock, "c", 1)
        d2 = await _enqueue(q, clock, "d", 2)  # its worker dies
        assert [t["id"] for t in await q.claim("dead", 1, 10.0, frozenset("abc"))] == [d2]
        e9 = await _enqueue(q, clock, "e", 9)  # its worker lives
        assert [t["id"] for t in await q.claim("alive", 1, 1000.0, frozenset("abcd"))] == [e9]
        a8 = await _enqueue(q, clock, "a", 8)  # waits for a retry
        assert [t["id"] for t in await q.claim("n", 1, 30.0, frozenset("bcde"))] == [a8]
        await q.retry_later(a8, 1000.0, {"detail": "busy"})
        a1_later = await _enqueue(q, clock, "a", 1)
        c_3 = await _enqueue(q, clock, "c", -3)
        a2 = await _enqueue(q, clock, "a", 2)
        c0 = await _enqueue(q, clock, "c", 0)
        clock.now += 20  # d2's lease has run out; e9's and a8's wait have not

        # The expired running d2 goes between queued tasks, by its priority and age.
        assert await _claim(q, path, clock, 3, frozenset({"b"})) == [d2, a2, a1]
        assert await _claim(q, path, clock, 3, frozenset({"b"})) == [c1, a1_later, a0]
        assert await _claim(q, path, clock, 10) == [b5, c0, c_3]
        assert await _claim(q, path, clock, 10) == []
        taken = await q.get(d2)
        assert taken is not None
        assert (taken["status"], taken["worker"], taken["attempts"]) == ("running", "w", 2)
        assert (await q.get(e9) or {})["worker"] == "alive"  # a live lease is left alone
        assert (await q.get(a8) or {})["status"] == "queued"
        await q.close()

    run(main)


def test_random_queues_are_claimed_as_the_single_query_would(tmp_path: Path) -> None:
    """Many priorities, ages, targets, skip sets, leases and retry delays; every claim is
    compared with the single query on the same rows."""

    async def main() -> None:
        rng = random.Random(7)
        path, clock = tmp_path / "tasks.sqlite3", Clock()
        q = EmbeddedQueue(path, clock=clock)
        targets = "abcde"
        for _ in range(300):
            await _enqueue(q, clock, rng.choice(targets), rng.randint(-2, 2))
        for _ in range(60):
            skip = frozenset(rng.sample(targets, rng.randint(0, 3)))
            n = rng.randint(1, 8)
            expected = _one_query(path, clock.now, n, skip)
            lease = rng.choice([5.0, 50.0])
            claimed = await q.claim("w", n, lease, skip)
            assert [t["id"] for t in claimed] == expected
            for t in claimed:
                if rng.random() < 0.2:
                    await q.retry_later(t["id"], rng.choice([0.0, 30.0]), {"detail": "again"})
                elif rng.random() < 0.3:
                    await q.finish(t["id"], "succeeded", result={})
            clock.now += rng.choice([0.0, 1.0, 10.0])
        await q.close()

    run(main)


def test_the_claims_statements_read_an_index_in_order_and_sort_nothing(tmp_path: Path) -> None:
    """EXPLAIN QUERY PLAN of every statement a claim runs (as SQLite traced it, with its
    values), on a file with statistics too: no temporary B-tree for an ORDER BY."""

    async def main() -> None:
        path, clock = tmp_path / "tasks.sqlite3", Clock()
        q = EmbeddedQueue(path, clock=clock)
        for i in range(2000):
            await _enqueue(q, clock, "ab"[i % 2], i % 3)
        await q.claim("dead", 5, 1.0)
        clock.now += 5
        q._db.execute("ANALYZE")  # the planner, given statistics, must still not sort
        ran: list[str] = []
        q._db.set_trace_callback(ran.append)
        for skip in (frozenset(), frozenset({"b"}), frozenset({"a", "x"})):
            assert await q.claim("w", 3, 30.0, skip)
        q._db.set_trace_callback(None)
        selects = [s for s in ran if s.lstrip().upper().startswith("SELECT")]
        db = sqlite3.connect(path)
        try:
            for statement in ran:
                if statement.split()[0].upper() in ("BEGIN", "COMMIT"):
                    continue
                plan = [str(r[3]) for r in db.execute(f"EXPLAIN QUERY PLAN {statement}")]
                assert not any("TEMP B-TREE" in step for step in plan), (statement, plan)
                if statement in selects:
                    assert plan == ["SEARCH tasks USING INDEX tasks_claim (status=?)"], plan
        finally:
            db.close()
        assert len(selects) == 6  # one per status per claim
        await q.close()

    run(main)


def test_a_store_of_an_earlier_version_gets_the_claim_index_at_open(tmp_path: Path) -> None:
    async def main() -> None:
        path, clock = tmp_path / "tasks.sqlite3", Clock()
        q = EmbeddedQueue(path, clock=clock)
        low = await _enqueue(q, clock, "a", 0)
        high = await _enqueue(q, clock, "a", 1)
        await q.close()
        db = sqlite3.connect(path)
        db.execute("DROP INDEX tasks_claim")  # as a file written before the index was
        db.close()

        q = EmbeddedQueue(path, clock=clock)
        assert [t["id"] for t in await q.claim("w", 5, 30.0)] == [high, low]
        await q.close()
        db = sqlite3.connect(path)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        finally:
            db.close()
        assert "tasks_claim" in names

    run(main)
