"""The TaskQueue protocol's behaviour, the same for the embedded and the Redis backend: storage,
claims and leases, retries, cancellation, questions and answers, owners, the result TTL.

These drive the stores directly (a real redis-server for Redis), so every rule of the protocol is
checked against both backends in seconds; tests/integration/test_tasks.py runs the same
backends behind a gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis.asyncio as aioredis

from meshgate.errors import QueueUnavailable
from meshgate.tasks import open_queue
from meshgate.tasks.base import TaskQueue, page
from meshgate.tasks.redis import PREFIX, RedisQueue
from meshgate.testing.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

TARGET = {"server": "s", "tool": "echo", "arguments": {"text": "x"}}


class QueueFactory(Protocol):
    def __call__(self, clock: Callable[[], float] = time.time) -> TaskQueue: ...


class Clock:
    """A wall clock the test moves by hand (retry delays and the result TTL go by it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "redis"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    """A factory of queue handles on one store (two handles: two nodes sharing it)."""
    if request.param == "embedded":
        path = tmp_path / "tasks.sqlite3"

        def embedded(clock: Callable[[], float] = time.time) -> TaskQueue:
            return open_queue("embedded", path, clock=clock)

        yield embedded
        return
    server = RedisServer(tmp_path).start()

    def shared(clock: Callable[[], float] = time.time) -> TaskQueue:
        return open_queue(server.url, None, clock=clock)

    try:
        yield shared
    finally:
        server.stop()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _hearing_events(q: TaskQueue) -> None:
    """Wait until the queue hears its events: the Redis backend once its listener subscribed
    (Redis counts the subscribers of the channel); the embedded one at once."""
    if not isinstance(q, RedisQueue):
        return
    client = aioredis.from_url(q.url)
    try:

        async def subscribed() -> bool:
            [(_, n)] = await client.pubsub_numsub(f"{PREFIX}events")
            return int(n) >= 1

        await _until(subscribed, "the event listener")
    finally:
        await client.aclose()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def _enqueue(q: TaskQueue, priority: int = 0, **kw: object) -> str:
    task_id, created = await q.enqueue(
        TARGET,
        "s",
        priority=priority,
        max_attempts=3,
        deadline_s=None,
        idempotency_key=kw.get("key"),  # type: ignore[arg-type]
        owner=kw.get("owner"),  # type: ignore[arg-type]
    )
    assert created
    return task_id


def test_claims_go_by_priority_then_age_and_each_task_to_one_worker(
    make_queue: QueueFactory,
) -> None:
    async def main() -> None:
        q = make_queue()
        await q.start()
        low = await _enqueue(q, priority=-5)
        first = await _enqueue(q)
        second = await _enqueue(q)
        high = await _enqueue(q, priority=5)
        claimed = await q.claim("n1", 2, 30)
        assert [t["id"] for t in claimed] == [high, first]
        assert all(t["status"] == "running" and t["attempts"] == 1 for t in claimed)
        assert all(t["worker"] == "n1" for t in claimed)
        other = await q.claim("n2", 10, 30)
        assert [t["id"] for t in other] == [second, low]  # nothing twice
        assert await q.claim("n2", 10, 30) == []
        assert await q.counts() == {"running": 4}
        await q.close()

    run(main)


def test_a_dead_workers_task_is_claimed_again_after_its_lease(
    make_queue: QueueFactory,
) -> None:
    async def main() -> None:
        q, other = make_queue(), make_queue()
        await q.start()
        await other.start()
        task_id = await _enqueue(q)
        assert [t["id"] for t in await q.claim("dead", 1, 1.0)] == [task_id]
        renewed = await _enqueue(q)
        assert [t["id"] for t in await q.claim("alive", 1, 1.0)] == [renewed]
        # The live worker renews its lease while another node tries to claim; the dead one's
        # lease (Redis's own idle time, for that backend) runs out, and only its task moves.
        again: list[dict[str, object]] = []

        async def taken_over() -> bool:
            await q.extend(renewed, "alive", 1.0)
            again.extend(await other.claim("n2", 5, 1.0))
            return bool(again)

        await _until(taken_over, "the dead worker's lease to run out")
        assert [t["id"] for t in again] == [task_id]  # the renewed one stays with its worker
        assert again[0]["attempts"] == 2 and again[0]["worker"] == "n2"
        assert await other.finish(task_id, "succeeded", result={"ok": True})
        assert not await q.finish(task_id, "failed")  # final stays final
        task = await q.get(task_id)
        assert task is not None and task["status"] == "succeeded" and task["result"] == {"ok": True}
        await q.close()
        await other.close()

    run(main)


def test_retries_wait_their_delay_and_requeue_own_frees_a_restarted_nodes_tasks(
    make_queue: QueueFactory,
) -> None:
    async def main() -> None:
        clock = Clock()
        q = make_queue(clock)
        await q.start()
        task_id = await _enqueue(q)
        await q.claim("n1", 1, 30)
        await q.retry_later(task_id, 60, {"detail": "busy"})
        task = await q.get(task_id)
        assert (
            task is not None and task["status"] == "queued" and task["error"] == {"detail": "busy"}
        )
        assert await q.claim("n1", 1, 30) == []
        clock.now += 59
        assert await q.claim("n1", 1, 30) == []  # not yet
        clock.now += 2
        assert [t["attempts"] for t in await q.claim("n1", 1, 30)] == [2]
        assert await q.requeue_own("n1") == 1  # n1 restarted: its task is ready again
        assert [t["attempts"] for t in await q.claim("n1", 1, 30)] == [3]
        assert await q.finish(task_id, "dead", error={"detail": "gave up"})
        assert await q.retry_dead(task_id)
        claimed = await q.claim("n1", 1, 30)
        assert [(t["id"], t["attempts"]) for t in claimed] == [(task_id, 1)]
        await q.close()

    run(main)


def test_cancelled_tasks_are_never_claimed_and_events_say_so(
    make_queue: QueueFactory,
) -> None:
    async def main() -> None:
        q = make_queue()
        events: list[tuple[str, str]] = []
        q.subscribe(lambda kind, task_id: events.append((kind, task_id)))
        await q.start()
        queued = await _enqueue(q)
        running = await _enqueue(q)
        await _hearing_events(q)
        assert await q.cancel(queued) == "queued"
        assert [t["id"] for t in await q.claim("n1", 5, 30)] == [running]
        assert await q.cancel(running) == "running"
        assert await q.cancel(running) == "cancelled"  # final: as it was
        assert await q.cancel("t-nope") is None
        assert not await q.finish(running, "succeeded")

        async def heard() -> bool:
            return ("cancel", running) in events

        await _until(heard, "the cancel event")
        assert ("cancel", queued) in events and ("done", running) in events
        assert await q.counts() == {"cancelled": 2}
        await q.close()

    run(main)


def test_questions_wait_for_their_answers(make_queue: QueueFactory) -> None:
    async def main() -> None:
        q = make_queue()
        await q.start()
        task_id = await _enqueue(q)
        assert not await q.ask_input(task_id, "k1", {"method": "m"})  # not running yet
        await q.claim("n1", 1, 30)
        question = {"method": "elicitation/create", "params": {"message": "ok?", "tags": []}}
        assert await q.ask_input(task_id, "k1", question)
        assert await q.ask_input(task_id, "k2", {"method": "roots/list", "params": {}})
        task = await q.get(task_id)
        assert task is not None and task["input_requests"]["k1"] == question  # as asked
        assert await q.take_input(task_id, "k1") == (False, None)
        answer = {"action": "accept", "content": {"tags": [], "n": 12345678901234}}
        assert await q.answer_input(task_id, {"k1": answer, "unknown": {}}) == 1
        assert await q.answer_input(task_id, {"k1": answer}) == 0  # answered already
        assert await q.answer_input("t-nope", {"k1": answer}) is None
        task = await q.get(task_id)
        assert task is not None and list(task["input_requests"]) == ["k2"]
        assert await q.take_input(task_id, "k1") == (True, answer)  # once, exactly
        assert await q.take_input(task_id, "k1") == (False, None)
        await q.retry_later(task_id, 0, {"detail": "again"})  # a new attempt asks afresh
        task = await q.get(task_id)
        assert task is not None and task["input_requests"] is None
        await q.close()

    run(main)


def test_owners_idempotency_and_the_result_ttl(make_queue: QueueFactory) -> None:
    async def main() -> None:
        clock = Clock()
        q = make_queue(clock)
        await q.start()
        mine = [await _enqueue(q, owner="session-a") for _ in range(3)]
        await _enqueue(q, owner="session-b")
        keyed = await _enqueue(q, key="once")
        again, created = await q.enqueue(
            TARGET, "s", priority=0, max_attempts=3, deadline_s=None, idempotency_key="once"
        )
        assert (again, created) == (keyed, False)
        first, cursor = await page(q, None, 2, owner="session-a")
        rest, end = await page(q, cursor, 2, owner="session-a")
        assert [t["id"] for t in first + rest] == sorted(mine) and end is None
        assert all("owner" not in t for t in first)  # never shown
        with pytest.raises(ValueError, match="not a cursor"):
            await page(q, "%%", 2)
        for task in await q.claim("n1", 10, 30):
            await q.finish(task["id"], "succeeded")
        clock.now += 30
        assert await q.sweep(60) == 0  # final for 30 s: kept for a 60 s TTL
        clock.now += 31
        assert await q.sweep(60) == 5
        assert await q.get(keyed) is None and await q.counts() == {}
        assert (await page(q, None, 10, owner="session-a"))[0] == []
        _, created = await q.enqueue(
            TARGET, "s", priority=0, max_attempts=3, deadline_s=None, idempotency_key="once"
        )
        assert created  # the key went with its task
        await q.close()

    run(main)


def test_an_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port

    async def main() -> None:
        q = open_queue(server.url, None)
        await q.start()  # does not fail: the workers retry
        with pytest.raises(QueueUnavailable, match="unreachable"):
            await _enqueue(q)
        assert q.status()["backend"] == "redis"
        await q.close()

    run(main)


class _AnswerCutter:
    """A TCP relay to Redis that, on the first command carrying `marker`, passes it on, holds
    Redis's answer until `release` is set, then drops the connection without it: a link that
    broke after Redis ran the command."""

    def __init__(self, redis_port: int, marker: bytes, release: asyncio.Event) -> None:
        self.redis_port, self.marker, self.release = redis_port, marker, release
        self.cut = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> _AnswerCutter:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def answers() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        back = asyncio.create_task(answers())
        try:
            while data := await reader.read(65536):
                cutting = not self.cut.is_set() and self.marker in data
                if cutting:
                    back.cancel()  # Redis's answer to this command never reaches the client
                    self.cut.set()
                up_writer.write(data)
                await up_writer.drain()
                if cutting:
                    await self.release.wait()
                    return
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()


def test_an_enqueue_sent_again_after_its_answer_was_lost_stores_the_task_once(
    tmp_path: Path,
) -> None:
    """The Redis client sends a command again on a new connection when the one it used broke
    (a Redis restart, a dropped link). An enqueue that Redis ran but whose answer was lost goes
    again with the same task id: the task stays as it is, here already run by another node,
    and is not queued a second time."""
    server = RedisServer(tmp_path).start()

    async def main() -> None:
        release = asyncio.Event()
        cutter = await _AnswerCutter(server.port, b"cut-me", release).start()
        q = open_queue(f"redis://127.0.0.1:{cutter.port}/0", None)
        other = open_queue(server.url, None)
        await other.cancel(await _enqueue(other))  # Redis knows the script: the cut one runs
        sending = asyncio.ensure_future(
            q.enqueue(
                TARGET, "cut-me", priority=0, max_attempts=3, deadline_s=None, idempotency_key=None
            )
        )
        await asyncio.wait_for(cutter.cut.wait(), 10)
        claimed: list[dict[str, object]] = []

        async def claim() -> bool:
            claimed.extend(await other.claim("n2", 10, 30))
            return bool(claimed)

        await _until(claim, "the first sending's task to be claimed")
        task_id = str(claimed[0]["id"])
        assert await other.finish(task_id, "succeeded", result={"ok": True})
        release.set()  # the answer is lost: the client sends the enqueue again
        id_, created = await asyncio.wait_for(sending, 10)
        assert (id_, created) == (task_id, True)
        view = await other.get(task_id)
        assert view is not None and (view["status"], view["attempts"]) == ("succeeded", 1)
        assert await other.claim("n3", 10, 30) == []  # not queued again
        assert (await other.counts()).get("queued", 0) == 0
        raw = aioredis.from_url(server.url)
        try:
            assert await raw.hget(f"{PREFIX}waiting", "cut-me") is None  # nothing counted waiting
        finally:
            await raw.aclose()
        for handle in (q, other):
            await handle.close()
        await cutter.close()

    try:
        run(main)
    finally:
        server.stop()
