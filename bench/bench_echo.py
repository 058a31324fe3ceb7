"""Echo-tool latency and throughput: direct stdio vs. through the gateway's REST endpoint.

Both sides call the same server (meshgate's fault server `echo`, or server-everything's `echo`)
in the same run, at concurrency 1 and 16, and print p50/p95/p99, calls/s and the ratios.

    .venv/bin/python bench/bench_echo.py [--calls 2000] [--server fault|everything] [--markdown]

The direct baseline is a minimal newline-delimited JSON-RPC client written here, independent of
meshgate's own code, with many requests in flight on one pipe. The gateway side is driven by
`wrk` (Debian package `wrk`) with keep-alive connections, because a Python HTTP client in the
same process saturates long before the gateway does; without wrk it falls back to httpx and
says so. Overhead = gateway p50 - direct p50, which still includes wrk's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from meshgate.testing.gateway import GatewayProcess, create_key, start_gateway

REPO = Path(__file__).resolve().parent.parent
SERVERS: dict[str, tuple[list[str], str, dict[str, Any]]] = {
    "fault": ([sys.executable, "-m", "meshgate.testing.fault_server"], "echo", {"text": "hi"}),
    "everything": (
        [str(REPO / "node_modules/.bin/mcp-server-everything")],
        "echo",
        {"message": "hi"},
    ),
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


class DirectClient:
    """A bare stdio MCP client: one pipe, many requests in flight."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.meta: dict[str, Any] | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            fut = self.pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        if self.meta is not None:
            params = {**params, "_meta": self.meta}
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        return await fut

    async def start(self) -> None:
        res = await self.request("server/discover", {"_meta": META})
        if "result" in res:
            self.meta = META
            return
        await self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')


async def measure(
    call: Callable[[], Awaitable[None]], calls: int, concurrency: int
) -> dict[str, float]:
    for _ in range(min(200, calls // 10)):  # warm-up
        await call()
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 600)
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": q[49] * 1e3,
        "p95_ms": q[94] * 1e3,
        "p99_ms": q[98] * 1e3,
        "calls_per_s": len(latencies) / elapsed,
    }


async def bench_direct(server: str, calls: int, levels: list[int]) -> dict[int, dict[str, float]]:
    cmd, tool, args = SERVERS[server]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        limit=64 * 1024 * 1024,
    )
    client = DirectClient(proc)
    try:
        await asyncio.wait_for(client.start(), 30)

        async def call() -> None:
            res = await client.request("tools/call", {"name": tool, "arguments": args})
            assert "result" in res, res

        return {c: await measure(call, calls, c) for c in levels}
    finally:
        proc.kill()
        await proc.wait()
        client.reader.cancel()


def revision_src(rev: str, parent: Path) -> str:
    """Another revision's `src`, extracted under `parent` (`git archive`: no worktree, nothing
    changed in the repository), for a benchmark to run as a baseline gateway."""
    tree = parent / f"baseline-{rev}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return str(tree / "src")


def start(server: str, workdir: Path) -> GatewayProcess:
    cmd, _, _ = SERVERS[server]
    return start_gateway(
        workdir,
        {"s": {"command": cmd[0], "args": cmd[1:]}},
        '[mesh]\nlog_level = "warning"\n[servers.s]\nmax_in_flight = 64\n',
        args=["--log-level", "info"],
    )


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


# Appended to every wrk script by run_wrk: prints the line it parses.
WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %f %f %f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str,
    script: str,
    duration: int,
    levels: list[int],
    *,
    threads: int = 2,
    cpu_pid: int | None = None,
) -> dict[int, dict[str, float]]:
    """Run wrk with a Lua script (WRK_DONE added) at each concurrency; with `cpu_pid`, also
    the CPU that process spent per request (`cpu_us_per_call`), a steadier measure than the
    rate on a machine the load generator shares."""
    out: dict[int, dict[str, float]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script + WRK_DONE)
        f.flush()
        for c in levels:
            subprocess.run(
                ["wrk", "-t1", "-c1", "-d1s", "-s", f.name, url],
                capture_output=True,
                timeout=60,
                check=True,
            )  # warm-up
            before = cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
            out[c] = wrk_once(url, Path(f.name), c, duration, threads=threads)
            if cpu_pid is not None and out[c]["requests"]:
                spent = cpu_seconds(cpu_pid) - before
                out[c]["cpu_us_per_call"] = spent / out[c]["requests"] * 1e6
            if out[c]["errors"]:
                print(f"warning: {out[c]['errors']:.0f} errors at concurrency {c}", file=sys.stderr)
    return out


def wrk_once(
    url: str, script: Path, concurrency: int, duration: int, *, threads: int = 2
) -> dict[str, float]:
    """One wrk run with a script that ends in WRK_DONE: calls/s, latency percentiles (ms),
    errors and the number of requests."""
    r = subprocess.run(
        [
            "wrk",
            f"-t{min(concurrency, threads)}",
            f"-c{concurrency}",
            f"-d{duration}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\S+) (\S+) (\S+)", r.stdout)
    if m is None:
        raise RuntimeError(f"unexpected wrk output: {r.stdout} {r.stderr}")
    n, errors, micros = int(m[1]), int(m[2]), int(m[3])
    return {
        "p50_ms": float(m[4]) / 1e3,
        "p95_ms": float(m[5]) / 1e3,
        "p99_ms": float(m[6]) / 1e3,
        "calls_per_s": n / (micros / 1e6),
        "errors": errors,
        "requests": n,
    }


def bench_gateway_wrk(
    url: str, server: str, duration: int, levels: list[int]
) -> dict[int, dict[str, float]]:
    _, tool, args = SERVERS[server]
    script = WRK_SCRIPT % json.dumps({"arguments": args})
    return run_wrk(f"{url}/api/v1/mcp/servers/s/tools/{tool}", script, duration, levels)


async def bench_gateway_httpx(
    url: str, server: str, calls: int, levels: list[int]
) -> dict[int, dict[str, float]]:
    _, tool, args = SERVERS[server]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        body = json.dumps({"arguments": args}).encode()
        headers = {"content-type": "application/json"}

        async def call() -> None:
            r = await client.post(
                f"/api/v1/mcp/servers/s/tools/{tool}", content=body, headers=headers
            )
            assert r.status_code == 200, r.text

        return {c: await measure(call, calls, c) for c in levels}


def make_key(data: Path, *extra: str) -> str:
    """A new API key with role `agent` in the data dir `data`; `extra`: more flags of `meshgate
    keys create` (`--registry`, `--policy`)."""
    return create_key(data, "bench", "--role", "agent", *extra)


def run_rest(
    url: str, server: str, duration: int, levels: list[int], key: str | None = None
) -> dict[int, dict[str, float]]:
    """wrk on the REST tool call of `server`'s echo at gateway `url`'s server `s`, with `key`
    as a bearer credential when given."""
    _, tool, args = SERVERS[server]
    script = WRK_SCRIPT % json.dumps({"arguments": args})
    if key is not None:
        script += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    return run_wrk(f"{url}/api/v1/mcp/servers/s/tools/{tool}", script, duration, levels)


Rows = list[tuple[str, dict[int, dict[str, float]]]]


def print_rows(
    rows: Rows, column: str, cell: Callable[[str, int, dict[str, float]], str], markdown: bool
) -> None:
    """wrk results, a line per row and concurrency: calls/s, p50, p99, `column` (what
    `cell(name, concurrency, result)` says) and errors; a Markdown table with `markdown`."""
    if markdown:
        print(f"| entry | concurrency | calls/s | p50 ms | p99 ms | {column} | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, result in rows:
        for c, r in result.items():
            cells = (
                name,
                str(c),
                f"{r['calls_per_s']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                cell(name, c, r),
                f"{r['errors']:.0f}",
            )
            print("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))


def report(
    direct: dict[int, dict[str, float]],
    gateway: dict[int, dict[str, float]],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"server: {args.server} echo; direct: {args.calls} calls per row; gateway: "
        f"{'wrk, ' + str(args.duration) + ' s per row' if shutil.which('wrk') else 'httpx'}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        "| path | concurrency | p50 ms | p95 ms | p99 ms | calls/s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in direct:
        for name, rows in (("direct stdio", direct), ("gateway REST", gateway)):
            r = rows[c]
            lines.append(
                f"| {name} | {c} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
                f"{r['p99_ms']:.3f} | {r['calls_per_s']:.0f} | {r.get('errors', 0):.0f} |"
            )
    lines.append("")
    for c in direct:
        d, g = direct[c], gateway[c]
        lines.append(
            f"- concurrency {c}: gateway p50 overhead {g['p50_ms'] - d['p50_ms']:.3f} ms; "
            f"throughput ratio gateway/direct {g['calls_per_s'] / d['calls_per_s']:.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--server", choices=sorted(SERVERS), default="fault")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = p.parse_args()
    direct = asyncio.run(bench_direct(args.server, args.calls, args.concurrency))
    with tempfile.TemporaryDirectory() as tmp:
        gw = start(args.server, Path(tmp))
        url = gw.url
        try:
            if shutil.which("wrk"):
                gateway = bench_gateway_wrk(url, args.server, args.duration, args.concurrency)
            else:
                print(
                    "wrk not found (apt-get install wrk): using httpx, which measures the "
                    "client more than the gateway",
                    file=sys.stderr,
                )
                gateway = asyncio.run(
                    bench_gateway_httpx(url, args.server, args.calls, args.concurrency)
                )
        finally:
            gw.stop()
    print(report(direct, gateway, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
