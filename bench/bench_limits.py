"""The cost of a rate limit check and of the task queue's bound on enqueue.

    .venv/bin/python bench/bench_limits.py [--n 5000]

Same run, in this process: (1) `MemoryLimiter.take` on one key and on 100 000 distinct keys;
(2) `RedisLimiter.take` against a real redis-server on loopback (one Lua script a call);
(3) the embedded queue's `enqueue` (SQLite, WAL, in a temp dir) with no bound, and with
`max_queued_tasks` counted over 10 000 waiting tasks. Prints p50/p95/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshgate.security.limits import MemoryLimiter, RedisLimiter
from meshgate.tasks import QueueBounds, TaskQueue, open_queue
from meshgate.testing.redis_server import RedisServer


async def timed(n: int, fn: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    for i in range(min(50, n)):  # warm-up
        await fn(-i - 1)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(samples, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def row(name: str, r: dict[str, float]) -> None:
    print(f"| {name} | {r['p50']:.4f} | {r['p95']:.4f} | {r['p99']:.4f} |")


def _enqueuer(queue: TaskQueue) -> Callable[[int], Awaitable[object]]:
    target = {"server": "s", "tool": "echo"}

    async def enqueue(i: int) -> object:
        return await queue.enqueue(
            target, "s", priority=0, max_attempts=1, deadline_s=None, idempotency_key=None
        )

    return enqueue


async def main(n: int) -> None:
    print(f"python {platform.python_version()}, {n} operations each\n")
    print("| operation | p50 ms | p95 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    memory = MemoryLimiter()
    row("MemoryLimiter.take, one key", await timed(n, lambda i: memory.take("k", 1e9, 10)))
    many = MemoryLimiter()
    row(
        "MemoryLimiter.take, 100 000 keys",
        await timed(n, lambda i: many.take(f"k{i % 100_000}", 0.001, 10)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            redis = RedisLimiter(server.url)
            row("RedisLimiter.take (loopback)", await timed(n, lambda i: redis.take("k", 1e9, 10)))
            await redis.close()
        finally:
            server.stop()
        for name, bounds in [
            ("enqueue, no bound", QueueBounds()),
            ("enqueue, bounds counted over 10 000 waiting", QueueBounds(10**9, 10**9)),
        ]:
            queue = open_queue("embedded", Path(tmp) / f"{len(name)}.sqlite3", bounds=bounds)
            enqueue = _enqueuer(queue)
            for i in range(10_000):
                await enqueue(i)
            row(name, await timed(n, enqueue))
            await queue.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    asyncio.run(main(parser.parse_args().n))
