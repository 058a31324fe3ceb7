"""Encryption at rest: what sealing task data costs the queue's own operations.

    .venv/bin/python bench/bench_crypto.py [--n 2000] [--size 1000]

For each backend (embedded: SQLite WAL in a temp dir; redis: a redis-server started for the
run on a free loopback port, no persistence), the same queue operations with and without an
encryption key, alternating, in one run: `enqueue` of a tool call whose arguments hold
`--size` bytes of text, `get` of it, `finish` with a result of the same size. Direct calls of
the store (no HTTP), so the difference is the cipher's share.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meshgate.crypto import PLAIN, Cipher, generate_key
from meshgate.tasks import open_queue
from meshgate.tasks.base import TaskQueue
from meshgate.testing.redis_server import RedisServer


def quantiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{q[49]:.1f} | {q[94]:.1f}"


async def ops(q: TaskQueue, n: int, size: int) -> dict[str, list[float]]:
    """Microseconds per `enqueue`, `get` and `finish` over `n` tasks."""
    target = {"server": "s", "tool": "echo", "arguments": {"text": "x" * size}}
    result = {"content": [{"type": "text", "text": "y" * size}]}
    out: dict[str, list[float]] = {"enqueue": [], "get": [], "finish": []}
    for _ in range(n):
        t0 = time.perf_counter()
        id_, _ = await q.enqueue(
            target, "s", priority=0, max_attempts=1, deadline_s=None, idempotency_key=None
        )
        t1 = time.perf_counter()
        await q.get(id_)
        t2 = time.perf_counter()
        await q.finish(id_, "succeeded", result=result)
        t3 = time.perf_counter()
        out["enqueue"].append((t1 - t0) * 1e6)
        out["get"].append((t2 - t1) * 1e6)
        out["finish"].append((t3 - t2) * 1e6)
    return out


async def backend(name: str, url: str, path: Path | None, n: int, size: int) -> None:
    ciphers = {"clear": PLAIN, "encrypted": Cipher([generate_key()])}
    totals: dict[str, dict[str, list[float]]] = {k: {} for k in ciphers}
    for _round in range(4):  # alternate, so that drift on a shared machine falls on both
        for label, cipher in ciphers.items():
            q = open_queue(url, path, cipher=cipher)
            await q.start()
            try:
                for op, samples in (await ops(q, n // 4, size)).items():
                    totals[label].setdefault(op, []).extend(samples)
            finally:
                await q.close()
    for op in ("enqueue", "get", "finish"):
        for label in ciphers:
            print(f"| {name} | {op} | {label} | {quantiles(totals[label][op])} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=1000)
    args = p.parse_args()
    print(
        f"n={args.n}, payload {args.size} bytes; {platform.machine()}, Python "
        f"{platform.python_version()}\n"
    )
    print("| backend | operation | data | p50 µs | p95 µs |\n| --- | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(backend("embedded", "embedded", Path(tmp) / "t.sqlite3", args.n, args.size))
        server = RedisServer(Path(tmp)).start()
        try:
            asyncio.run(backend("redis", server.url, None, args.n, args.size))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
