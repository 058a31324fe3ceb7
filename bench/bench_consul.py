"""What the Consul-compatible API costs: a health read (`GET /v1/health/service/{name}`) at a
few concurrencies, and many idle blocking queries held at once: the gateway's memory for them,
how long one TTL update takes to wake them all, and that one more than the bound is refused.

    .venv/bin/python bench/bench_consul.py [--held 1000] [--duration 5]

A real gateway (the fault MCP server behind it) and a service registered with a TTL check; the
reads from wrk, the held queries on raw connections (a Python HTTP client would measure
itself), all on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench_echo import run_wrk
from meshgate.testing.gateway import start_gateway

FAULT = {"command": "python", "args": ["-m", "meshgate.testing.fault_server"]}
# The Consul health read, and meshgate's own view of the same service beside it.
READS = ("/v1/health/service/web?passing=1", "/api/v1/mesh/v2/services/web")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def raw_get(host: str, port: int, target: str) -> int:
    """One GET on a connection of its own (closed after the answer); its status. Raw
    streams rather than an HTTP client: a thousand answers at once would measure the client."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def held(url: str, pid: int, n: int) -> None:
    host, _, port_text = url.removeprefix("http://").rpartition(":")
    port = int(port_text)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.get("/v1/health/service/web")
        index = r.headers["x-consul-index"]
        before = rss_kib(pid)
        done: list[float] = []
        target = f"/v1/health/service/web?index={index}&wait=100s"

        async def block() -> int:
            status = await raw_get(host, port, target)
            done.append(time.perf_counter())
            return status

        tasks = [asyncio.ensure_future(block()) for _ in range(n)]
        # Held once the next one is refused: every slot is taken.
        deadline = time.monotonic() + 60
        while True:
            extra = await client.get(
                "/v1/health/service/web", params={"index": index, "wait": "1ms"}
            )
            if extra.status_code == 429:
                break
            assert time.monotonic() < deadline, "the queries were never all held"
            await asyncio.sleep(0.05)
        during = rss_kib(pid)
        start = time.perf_counter()
        r = await client.put("/v1/agent/check/fail/service:web-1")
        assert r.status_code == 200, r.text
        put_ms = (time.perf_counter() - start) * 1000
        statuses = await asyncio.gather(*tasks)
        assert all(s == 200 for s in statuses), set(statuses)
        wake = sorted((t - start) * 1000 for t in done)
        print(
            f"| {n} | {(during - before) / 1024:.1f} | {(during - before) / n:.1f} | "
            f"{put_ms:.0f} | {wake[0]:.0f} | {statistics.median(wake):.0f} | {wake[-1]:.0f} | "
            f"{extra.status_code} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = parser.parse_args()
    policy = (
        f"[mesh]\nmax_connections = {args.held + 100}\n\n"
        f"[consul]\nmax_blocking_queries = {args.held}\n"
        f"max_blocking_queries_per_principal = {args.held}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp), {"fault": FAULT}, policy)
        try:
            register = {
                "Name": "web",
                "ID": "web-1",
                "Address": "127.0.0.1",
                "Port": 9,
                "Check": {"TTL": "600s", "Status": "passing"},
            }
            r = httpx.put(gw.url + "/v1/agent/service/register", json=register, timeout=10)
            assert r.status_code == 200, r.text
            print("| read | concurrency | requests/s | p50 ms | p99 ms |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for path in READS:
                for c, row in run_wrk(gw.url + path, "", args.duration, [1, 16]).items():
                    print(
                        f"| `{path}` | {c} | {row['calls_per_s']:.0f} | {row['p50_ms']:.2f} | "
                        f"{row['p99_ms']:.2f} |"
                    )
            print(
                "\n| held | RSS MiB | KiB each | update ms | first woken ms | p50 ms | last ms | "
                "one more |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            )
            asyncio.run(held(gw.url, gw.proc.pid, args.held))
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
