"""Task queue: enqueue latency and end-to-end tasks/s against the echo tool, same run as REST.

    .venv/bin/python bench/bench_tasks.py [--n 1000] [--concurrency 8]

For each backend (embedded: SQLite WAL in a temp dir; redis: a redis-server started for the
run on a free loopback port, no persistence), one gateway with `task_concurrency` workers:
(1) the baseline, `--n` REST calls of the fault server's echo, sequential; (2) `--n` enqueues
of the same call, sequential (each stored before its 202); (3) the time from the first
enqueue until every task has succeeded, as tasks/s.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_echo import SERVERS
from meshgate.testing.gateway import start_gateway
from meshgate.testing.redis_server import RedisServer


def quantiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{q[49]:.3f} | {q[94]:.3f} | {q[98]:.3f}"


def run(tmp: Path, n: int, concurrency: int, queue: str) -> tuple[list[float], list[float], float]:
    """(REST call ms, enqueue ms, end-to-end seconds) through one gateway on this queue."""
    cmd, _, _ = SERVERS["fault"]
    gw = start_gateway(
        tmp,
        {"s": {"command": cmd[0], "args": cmd[1:]}},
        '[mesh]\nlog_level = "warning"\n',
        env={"MESHGATE_TASK_CONCURRENCY": str(concurrency), "MESHGATE_QUEUE": queue},
        args=["--log-level", "info"],
    )
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            body = {"arguments": {"text": "hi"}}
            rest = []
            for _ in range(n):
                t0 = time.perf_counter()
                assert c.post("/api/v1/mcp/servers/s/tools/echo", json=body).status_code == 200
                rest.append((time.perf_counter() - t0) * 1000)
            task = {"target": {"server": "s", "tool": "echo", "arguments": {"text": "hi"}}}
            enq, ids = [], []
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post("/api/v1/mesh/v2/enqueue", json=task)
                enq.append((time.perf_counter() - t0) * 1000)
                ids.append(r.json()["task_id"])
            for id_ in ids:
                r = c.get(f"/api/v1/mesh/v2/task/{id_}", params={"wait_s": 60})
                assert r.json()["status"] == "succeeded", r.text
            elapsed = time.perf_counter() - start
    finally:
        gw.stop()
    return rest, enq, elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "embedded").mkdir()
        results["embedded"] = run(Path(tmp) / "embedded", args.n, args.concurrency, "embedded")
        (Path(tmp) / "redis").mkdir()
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            results["redis"] = run(Path(tmp) / "redis", args.n, args.concurrency, redis.url)
        finally:
            redis.stop()
    print(
        f"n={args.n}, task_concurrency={args.concurrency}; {platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    print()
    print("| backend | operation | p50 ms | p95 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for backend, (rest, enq, _) in results.items():
        print(f"| {backend} | REST tool call (baseline, sequential) | {quantiles(rest)} |")
        print(f"| {backend} | POST /enqueue (stored before 202) | {quantiles(enq)} |")
    print()
    for backend, (_, _, elapsed) in results.items():
        print(
            f"{backend}: end to end, {args.n} tasks in {elapsed:.2f} s = "
            f"{args.n / elapsed:.0f} tasks/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
