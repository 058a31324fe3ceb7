"""Bounds of the task queue, with both backends: waiting tasks in all and per target (429 past
them), and final tasks kept by count (the oldest go first).

The store tests drive the queues directly (a real redis-server for Redis); the gateway tests
enqueue over the REST API past the bound and see the 429, its Retry-After and its metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from meshgate.observability.metrics import metrics
from meshgate.tasks import QueueBounds, QueueFull, TaskQueue, open_queue
from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


class QueueFactory(Protocol):
    def __call__(
        self, bounds: QueueBounds, clock: Callable[[], float] = time.time
    ) -> TaskQueue: ...


@pytest.fixture(params=["embedded", "redis"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    """Queue handles on one store (two handles: two nodes sharing it)."""
    if request.param == "embedded":
        path = tmp_path / "tasks.sqlite3"

        def embedded(bounds: QueueBounds, clock: Callable[[], float] = time.time) -> TaskQueue:
            return open_queue("embedded", path, clock=clock, bounds=bounds)

        yield embedded
        return
    server = RedisServer(tmp_path).start()

    def shared(bounds: QueueBounds, clock: Callable[[], float] = time.time) -> TaskQueue:
        return open_queue(server.url, None, clock=clock, bounds=bounds)

    try:
        yield shared
    finally:
        server.stop()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def _enqueue(q: TaskQueue, target: str = "s", key: str | None = None) -> str:
    task_id, _ = await q.enqueue(
        {"server": target, "tool": "echo"},
        target,
        priority=0,
        max_attempts=3,
        deadline_s=None,
        idempotency_key=key,
    )
    return task_id


def _refused(policy: str) -> float:
    return metrics.registry.get_sample_value("meshgate_rate_limited_total", {"policy": policy}) or 0


def test_enqueue_past_the_bounds_is_refused(make_queue: QueueFactory) -> None:
    async def main() -> None:
        bounds = QueueBounds(max_queued=5, max_queued_per_target=3)
        node1, node2 = make_queue(bounds), make_queue(bounds)
        await node1.start()
        await node2.start()
        try:
            first = await _enqueue(node1, "a", key="k1")
            for _ in range(2):
                await _enqueue(node2, "a")
            before = _refused("queue_per_target")
            with pytest.raises(QueueFull) as e:
                await _enqueue(node1, "a")  # a's share is full, whichever node is asked
            assert e.value.status == 429 and e.value.retry_after
            assert "'a'" in e.value.detail and "max_queued_tasks_per_target" in e.value.detail
            assert _refused("queue_per_target") == before + 1
            assert await _enqueue(node1, "a", key="k1") == first  # a replay stores nothing
            await _enqueue(node1, "b")
            await _enqueue(node2, "b")
            before = _refused("queue")
            with pytest.raises(QueueFull, match="max_queued_tasks\\)"):
                await _enqueue(node1, "c")  # 5 waiting in all
            assert _refused("queue") == before + 1
            assert (await node1.counts()).get("queued") == 5

            claimed = await node1.claim("w1", 1, 30)  # running is not waiting
            assert len(claimed) == 1
            await _enqueue(node2, "c")
            with pytest.raises(QueueFull):
                await _enqueue(node2, "c")
            left = [t for t in await node1.list("queued", "", 10) if t["target"]["server"] != "a"]
            assert await node2.cancel(left[0]["id"]) == "queued"  # its place is free again
            await node1.retry_later(claimed[0]["id"], 60, {"message": "later"})  # waiting again
            assert (await node1.counts()).get("queued") == 5
            with pytest.raises(QueueFull):
                await _enqueue(node1, "d")
            assert claimed[0]["id"] == first
            assert await node1.cancel(first) == "queued"
            await _enqueue(node1, "d")
        finally:
            await node1.close()
            await node2.close()

    run(main)


def test_final_tasks_beyond_max_kept_go_oldest_first(make_queue: QueueFactory) -> None:
    async def main() -> None:
        now = [time.time()]
        q = make_queue(QueueBounds(max_kept=4), clock=lambda: now[0])
        await q.start()
        try:
            ids = [await _enqueue(q) for _ in range(10)]
            waiting = ids[8:]  # never final: never forgotten by count
            for i, task_id in enumerate(ids[:8]):
                now[0] += 1
                status = ("succeeded", "failed", "dead", "cancelled")[i % 4]
                assert await q.finish(task_id, status)
            assert await q.sweep(86400) == 4  # none old enough for the TTL; 4 beyond max_kept
            kept = [task_id for task_id in ids if await q.get(task_id) is not None]
            assert kept == ids[4:8] + waiting
            assert await q.sweep(86400) == 0
            now[0] += 1
            assert await q.finish(waiting[0], "succeeded")
            assert await q.sweep(86400) == 1
            assert await q.get(ids[4]) is None and await q.get(waiting[0]) is not None
            now[0] += 86400 * 2
            assert await q.sweep(86400) == 4  # and the result TTL still applies
            assert [t["id"] for t in await q.list(None, "", 20)] == [waiting[1]]
        finally:
            await q.close()

    run(main)


def _enqueue_http(
    gw: Gateway, target: str, tool: str = "write"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    r = gw.http.post(f"{API}/enqueue", json={"target": {"server": target, "tool": tool}})
    return r.status_code, dict(r.headers), r.json()


def _until_running(gw: Gateway, task_id: str) -> None:
    deadline = time.monotonic() + 20
    while gw.get(f"{API}/task/{task_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)


def test_the_task_api_answers_429_past_the_bounds(tmp_path: Path, queue: dict[str, str]) -> None:
    env = {
        "MESHGATE_TASK_CONCURRENCY": "1",  # one task runs (hangs); the others wait
        "MESHGATE_MAX_QUEUED_TASKS": "3",
        "MESHGATE_MAX_QUEUED_TASKS_PER_TARGET": "2",
        **queue,
    }
    servers = {"fault": fault_server(), "other": fault_server()}
    with run_gateway(tmp_path, servers, env=env) as gw:
        status, _, body = _enqueue_http(gw, "fault", "hang")
        assert status == 202
        hanging = body["task_id"]
        _until_running(gw, hanging)
        waiting = [_enqueue_http(gw, "fault")[2]["task_id"] for _ in range(2)]
        status, headers, problem = _enqueue_http(gw, "fault")
        assert status == 429, problem
        assert headers["content-type"].startswith("application/problem+json")
        assert problem["type"].endswith("/queue-full")
        assert problem["bound"] == "max_queued_tasks_per_target" and problem["limit"] == 2
        assert int(headers["retry-after"]) >= 1
        assert _enqueue_http(gw, "other")[0] == 202  # another target still has room
        status, headers, problem = _enqueue_http(gw, "other")
        assert status == 429 and problem["bound"] == "max_queued_tasks"  # 3 waiting in all
        text = gw.http.get("/metrics").text
        assert 'meshgate_rate_limited_total{policy="queue_per_target"} 1.0' in text
        assert 'meshgate_rate_limited_total{policy="queue"} 1.0' in text
        assert gw.http.delete(f"{API}/task/{waiting[0]}").json()["was"] == "queued"
        assert _enqueue_http(gw, "other")[0] == 202  # a place freed, taken at once
        assert gw.http.delete(f"{API}/task/{hanging}").status_code == 200
