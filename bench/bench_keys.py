"""What checking an API key costs a request: `Keys.verify` with its cache warm (a key seen
in the last 5 s) and cold (one look-up), on the SQLite file and on a local redis-server.

    .venv/bin/python bench/bench_keys.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from meshgate.security.keys import KeyBackend, Keys
from meshgate.security.keystores import RedisKeys, SqliteKeys
from meshgate.testing.redis_server import RedisServer


async def measure(keys: Keys, token: str, calls: int) -> tuple[float, float]:
    """(p50, p99) of `calls` verifications, in microseconds."""
    await keys.verify(token)
    times: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        await keys.verify(token)
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


async def run(name: str, open_backend: Callable[[], KeyBackend], calls: int) -> None:
    maker = Keys(open_backend())
    token, _ = await maker.create("bench", ["admin"])
    for label, cache_s in (("warm", 5.0), ("cold", 0.0)):
        keys = Keys(open_backend(), cache_s=cache_s)
        p50, p99 = await measure(keys, token, calls)
        print(f"| {name} | {label} | {p50:.1f} | {p99:.1f} |")
        await keys.close()
    await maker.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    print("| store | cache | p50 us | p99 us |\n| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.sqlite3"
        asyncio.run(run("sqlite", lambda: SqliteKeys(path), args.calls))
        server = RedisServer(Path(tmp)).start()
        try:
            asyncio.run(run("redis", lambda: RedisKeys(server.url), args.calls))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
