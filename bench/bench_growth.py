"""Costs as the mesh grows: each a curve over three sizes or more, to see linear or worse.

    .venv/bin/python bench/bench_growth.py [servers|tools|sessions|http|tasks|all]
        [--sizes N N N]

- servers: N stdio fault servers x 2 instances from one config; seconds from the gateway's
  start until every instance is healthy (`/api/v1/mesh/v2/health`), the gateway's RSS and its
  children's (VmRSS from /proc) once they are.
- tools: `/mcp` `tools/list` over 5 servers offering ~100, ~500, ~2500 tools in all (the fault
  server with extra tools, run as `bench_growth.py tool-server --tools N`); the first list of
  a session, the next 200 (name table cached), lists right after a server's catalog changed,
  and what a 2026-07-28 list says in `ttlMs` / `cacheScope`.
- sessions: 2025-11-25 sessions opened on one gateway, 1,000 / 5,000 / 10,000 (cumulative);
  RSS per session and a `tools/call` on one session at each size.
- http: HTTP service instances registered, 100 / 500 / 1,000 (cumulative), http checks every
  second against one server process listening on 20 ports (`bench_growth.py http-farm`); the
  gateway's CPU seconds per second over 10 s, the observed interval between two checks of an
  instance, and the registration latency at each size.
- tasks: 1,000 / 10,000 / 100,000 tasks queued, filled in-process through the task store
  (`meshgate.tasks.open_queue`; 100,000 over HTTP would take minutes), embedded SQLite and
  Redis (a redis-server started for the run): enqueue p50/p99 of 200 more at that depth, and
  `claim` (what a worker does to start a task) p50/p99 of 50 claims of one task, and one of 8.

Everything runs on loopback, each wait bounded; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench_mcp import ACCEPT, HANDSHAKE, open_session, stateless_envelope
from meshgate.tasks import open_queue
from meshgate.tasks.base import QueueBounds
from meshgate.testing import fault_server
from meshgate.testing.gateway import GatewayProcess, start_gateway
from meshgate.testing.redis_server import RedisServer

FAULT = [sys.executable, "-m", "meshgate.testing.fault_server"]
SELF = [sys.executable, str(Path(__file__).resolve())]
HEALTH = "/api/v1/mesh/v2/health"
QUIET = '[mesh]\nlog_level = "warning"\n'
Row = dict[str, Any]


# -- process measures (/proc) --------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100)[p - 1] if len(samples) > 1 else samples[0]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def wait_healthy(gw: GatewayProcess, n: int, timeout: float) -> None:
    """Until the gateway's health report counts `n` healthy instances."""

    def healthy() -> bool:
        return bool(httpx.get(gw.url + HEALTH, timeout=30).json()["healthy_instances"] == n)

    wait_for(healthy, timeout, f"{n} healthy instances")


def table(title: str, columns: list[str], rows: list[Row], bar: str | None = None) -> None:
    """A Markdown table of `rows` (keys: `columns`), with an ASCII bar of column `bar`."""
    print(f"\n### {title}\n")
    head = [*columns, *(["curve"] if bar else [])]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join("---:" for _ in head) + " |")
    top = max((float(r[bar]) for r in rows), default=1.0) if bar else 1.0
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns]
        if bar:
            cells.append("`" + "#" * max(1, round(30 * float(r[bar]) / (top or 1.0))) + "`")
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


# -- 1. servers ----------------------------------------------------------------------------


def bench_servers(sizes: list[int], tmp: Path) -> None:
    rows = []
    for n in sizes:
        work = tmp / f"servers-{n}"
        work.mkdir()
        servers = {f"s{i}": {"command": FAULT[0], "args": FAULT[1:]} for i in range(n)}
        policy = QUIET + "[defaults]\ninstances = 2\nstartup_timeout_s = 120\n"
        t0 = time.perf_counter()
        gw = start_gateway(work, servers, policy, args=["--log-level", "info"], ready_timeout=300)
        try:
            ready = time.perf_counter() - t0
            wait_healthy(gw, 2 * n, 300)
            healthy = time.perf_counter() - t0
            kids = descendants(gw.proc.pid)
            rows.append(
                {
                    "servers": n,
                    "instances": 2 * n,
                    "ready s": ready,
                    "all healthy s": healthy,
                    "gateway RSS MiB": rss_kib(gw.proc.pid) / 1024,
                    "children": len(kids),
                    "children RSS MiB": sum(rss_kib(k) for k in kids) / 1024,
                    "gateway KiB/instance": 0.0,  # the slope from the first size
                }
            )
        finally:
            gw.stop()
    base = rows[0]
    for r in rows[1:]:
        r["gateway KiB/instance"] = (
            (r["gateway RSS MiB"] - base["gateway RSS MiB"])
            * 1024
            / (r["instances"] - base["instances"])
        )
    table("Servers: start until every instance is healthy", list(rows[0]), rows, "all healthy s")


# -- 2. tools/list over many tools -------------------------------------------------------


class ManyTools(fault_server.FaultServer):
    """The fault server with `--tools` tools in all (the extra ones echo)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        extra = max(0, args.tools - len(fault_server.TOOLS))
        self.extra_tools = [f"extra_{i:04d}" for i in range(extra)]


def tool_server(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_growth.py tool-server")
    p.add_argument("--tools", type=int, required=True)
    ours, rest = p.parse_known_args(argv)
    args = fault_server.parse_args(rest)
    args.tools = ours.tools
    fault_server.run(ManyTools, args)


def rpc(method: str, params: Row, id_: int | None = 1) -> Row:
    """A JSON-RPC request (a notification with `id_` None)."""
    msg: Row = {"jsonrpc": "2.0", "method": method, "params": params}
    return msg if id_ is None else {**msg, "id": id_}


def post(c: httpx.Client, url: str, headers: dict[str, str], msg: Row) -> tuple[float, Row]:
    """(ms, JSON-RPC answer) of one request."""
    t0 = time.perf_counter()
    r = c.post(url, json=msg, headers=headers)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{msg['method']}: {r.status_code} {r.text[:300]}")
    body: Row = r.json()
    if "result" not in body:
        raise RuntimeError(f"{msg['method']}: {body}")
    return ms, body


def bench_tools(sizes: list[int], tmp: Path) -> None:
    per_server = 5
    rows = []
    for total in sizes:
        work = tmp / f"tools-{total}"
        work.mkdir()
        tools = total // per_server
        cmd = [*SELF, "tool-server", "--tools", str(tools)]
        servers = {f"s{i}": {"command": cmd[0], "args": cmd[1:]} for i in range(per_server)}
        gw = start_gateway(work, servers, QUIET, args=["--log-level", "info"])
        try:
            rows.append(list_tools(gw, tools))
        finally:
            gw.stop()
    table("Aggregated tools/list on /mcp (5 servers)", list(rows[0]), rows, bar="cached p50 ms")


def list_tools(gw: GatewayProcess, per_server: int) -> Row:
    url = gw.url + "/mcp"
    headers = open_session(url, HANDSHAKE)
    with httpx.Client(timeout=60) as c:
        listing = rpc("tools/list", {})
        first, body = post(c, url, headers, listing)
        count = len(body["result"]["tools"])
        size = len(json.dumps(body))
        cached = [post(c, url, headers, listing)[0] for _ in range(200)]
        changed = []
        for k in range(5):  # a catalog change: the name table is built again
            add = {"name": "s0__add_tool", "arguments": {"name": f"added_{k}"}}
            post(c, url, headers, rpc("tools/call", add))
            want = per_server + k + 1

            def listed(want: int = want) -> bool:
                r = c.get(gw.url + "/api/v1/mcp/servers/s0/tools")
                return len(r.json()["items"]) == want

            wait_for(listed, 30, "the catalog change")
            changed.append(post(c, url, headers, listing)[0])
        meta, stateless = stateless_envelope("tools/list")
        msg = rpc("tools/list", {"_meta": meta})
        sl = [post(c, url, stateless, msg) for _ in range(50)]
        result = sl[0][1]["result"]
    return {
        "tools": count,
        "answer KiB": size / 1024,
        "first ms": first,
        "cached p50 ms": pct(cached, 50),
        "cached p99 ms": pct(cached, 99),
        "after change ms (5)": f"{min(changed):.1f}-{max(changed):.1f}",
        "stateless p50 ms": pct([ms for ms, _ in sl], 50),
        "ttlMs": result.get("ttlMs"),
        "cacheScope": result.get("cacheScope"),
    }


# -- 3. sessions -------------------------------------------------------------------------


async def open_sessions(url: str, n: int, concurrency: int = 16) -> None:
    client = {"name": "bench", "version": "1"}
    init = rpc(
        "initialize", {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": client}
    )
    note = rpc("notifications/initialized", {}, None)
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}
    left = n
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await c.post(url, json=init, headers=base)
                if r.status_code != 200:
                    raise RuntimeError(f"initialize: {r.status_code} {r.text[:300]}")
                headers = {
                    **base,
                    "MCP-Protocol-Version": HANDSHAKE,
                    "Mcp-Session-Id": r.headers["mcp-session-id"],
                }
                r = await c.post(url, json=note, headers=headers)
                if r.status_code != 202:
                    raise RuntimeError(f"initialized: {r.status_code} {r.text[:300]}")

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 600)


def bench_sessions(sizes: list[int], tmp: Path) -> None:
    work = tmp / "sessions"
    work.mkdir()
    top = max(sizes) + 100
    policy = (
        f'[mesh]\nlog_level = "warning"\nmax_sessions = {top}\n'
        f"max_sessions_per_principal = {top}\nsession_unused_timeout_s = 3600\n"
        "session_idle_timeout_s = 3600\n"
    )
    gw = start_gateway(
        work, {"s": {"command": FAULT[0], "args": FAULT[1:]}}, policy, args=["--log-level", "info"]
    )
    rows = []
    try:
        url = gw.url + "/mcp/s"
        headers = open_session(url)
        call = rpc("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        with httpx.Client(timeout=60) as c:
            for _ in range(200):  # warm-up: the RSS baseline includes one used session
                post(c, url, headers, call)
            rss0 = rss_kib(gw.proc.pid)
            opened = 0
            for n in sizes:
                t0 = time.perf_counter()
                asyncio.run(open_sessions(url, n - opened))
                rate = (n - opened) / (time.perf_counter() - t0)
                opened = n
                rss = rss_kib(gw.proc.pid)
                calls = [post(c, url, headers, call)[0] for _ in range(300)]
                rows.append(
                    {
                        "sessions": n,
                        "opened/s": rate,
                        "gateway RSS MiB": rss / 1024,
                        "KiB/session": (rss - rss0) / n,
                        "tools/call p50 ms": pct(calls, 50),
                        "tools/call p99 ms": pct(calls, 99),
                    }
                )
    finally:
        gw.stop()
    print(f"\n(baseline RSS with one session: {rss0 / 1024:.1f} MiB)")
    table("Sessions held by one gateway", list(rows[0]), rows, bar="gateway RSS MiB")


# -- 4. HTTP instances ---------------------------------------------------------------------


async def farm(ports: int) -> None:
    """HTTP/1.1 keep-alive servers on `ports` ports answering 200 to anything; `/counts` is
    the number of other requests so far, per path."""
    hits: Counter[str] = Counter()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1].decode()
                if path != "/counts":
                    hits[path] += 1
                body = json.dumps(hits).encode() if path == "/counts" else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    listening = []
    for _ in range(ports):
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        listening.append(server.sockets[0].getsockname()[1])
    print(json.dumps(listening), flush=True)
    await asyncio.Event().wait()


def bench_http(sizes: list[int], tmp: Path, interval: float = 1.0, window: float = 10.0) -> None:
    work = tmp / "http"
    work.mkdir()
    proc = subprocess.Popen([*SELF, "http-farm"], stdout=subprocess.PIPE, text=True)
    gw: GatewayProcess | None = None
    rows = []
    try:
        assert proc.stdout is not None
        ports: list[int] = json.loads(proc.stdout.readline())
        gw = start_gateway(work, {}, QUIET, args=["--log-level", "info"])
        api = gw.url + "/api/v1/mesh/v2"
        farm_url = f"http://127.0.0.1:{ports[0]}/counts"
        registered = 0
        with httpx.Client(timeout=60) as c:
            for n in sizes:
                lat = []
                for k in range(registered, n):
                    reg = {
                        "name": "svc",
                        "id": f"i{k}",
                        "url": f"http://127.0.0.1:{ports[k % len(ports)]}/k{k}",
                        "check": {"type": "http", "path": f"/h{k}", "interval_s": interval},
                    }
                    t0 = time.perf_counter()
                    r = c.post(f"{api}/register", json=reg)
                    lat.append((time.perf_counter() - t0) * 1000)
                    if r.status_code not in (200, 201):
                        raise RuntimeError(f"register: {r.status_code} {r.text[:300]}")
                registered = n
                wait_healthy(gw, n, 120)
                time.sleep(2 * interval)  # the checks of the last ones settle into their pace
                before = c.get(farm_url).json()
                cpu0, t0 = cpu_s(gw.proc.pid), time.perf_counter()
                time.sleep(window)
                cpu1, t1 = cpu_s(gw.proc.pid), time.perf_counter()
                after = c.get(farm_url).json()
                checks = sum(after.values()) - sum(before.values())
                rows.append(
                    {
                        "instances": n,
                        "register p50 ms": pct(lat, 50),
                        "register p99 ms": pct(lat, 99),
                        "checks/s": checks / (t1 - t0),
                        "interval seen s": n * (t1 - t0) / max(1, checks),
                        "gateway CPU s/s": (cpu1 - cpu0) / (t1 - t0),
                        "CPU ms/check": (cpu1 - cpu0) * 1000 / max(1, checks),
                        "gateway RSS MiB": rss_kib(gw.proc.pid) / 1024,
                    }
                )
    finally:
        if gw is not None:
            gw.stop()
        proc.kill()
        proc.wait(10)
    title = f"HTTP instances, http checks every {interval:g} s"
    table(title, list(rows[0]), rows, bar="gateway CPU s/s")


# -- 5. tasks ------------------------------------------------------------------------------


async def fill_and_time(url: str, path: Path, sizes: list[int]) -> list[Row]:
    queue = open_queue(url, path, bounds=QueueBounds(max_queued=10 * max(sizes)))
    await queue.start()
    target = {"server": "s", "tool": "echo", "arguments": {"text": "hi"}}

    async def enqueue() -> None:
        await queue.enqueue(
            target, "s", priority=0, max_attempts=3, deadline_s=None, idempotency_key=None
        )

    async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await fn()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    rows, depth = [], 0
    try:
        for n in sizes:
            t0 = time.perf_counter()
            while depth < n - 200:
                batch = min(64, n - 200 - depth)
                await asyncio.gather(*(enqueue() for _ in range(batch)))
                depth += batch
            fill = time.perf_counter() - t0
            enq = await timed(enqueue, 200)
            depth += 200
            claims = await timed(lambda: queue.claim("bench", 1, 30.0), 50)
            claim8 = await timed(lambda: queue.claim("bench", 8, 30.0), 1)
            depth -= 58
            rows.append(
                {
                    "backend": queue.name,
                    "queued": n,
                    "fill s": fill,
                    "enqueue p50 ms": pct(enq, 50),
                    "enqueue p99 ms": pct(enq, 99),
                    "claim 1 p50 ms": pct(claims, 50),
                    "claim 1 p99 ms": pct(claims, 99),
                    "claim 8 ms": claim8[0],
                }
            )
    finally:
        close = getattr(queue, "close", None)
        if close is not None:
            await close()
    return rows


def bench_tasks(sizes: list[int], tmp: Path) -> None:
    rows = asyncio.run(fill_and_time("embedded", tmp / "tasks.sqlite3", sizes))
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis").start()
    try:
        rows += asyncio.run(fill_and_time(redis.url, tmp / "unused", sizes))
    finally:
        redis.stop()
    table("Tasks queued (store filled in-process)", list(rows[0]), rows, bar="claim 1 p50 ms")


# ------------------------------------------------------------------------------------------

PARTS: dict[str, tuple[Callable[[list[int], Path], None], list[int]]] = {
    "servers": (bench_servers, [10, 25, 50]),
    "tools": (bench_tools, [100, 500, 2500]),
    "sessions": (bench_sessions, [1000, 5000, 10000]),
    "http": (bench_http, [100, 500, 1000]),
    "tasks": (bench_tasks, [1000, 10000, 100000]),
}


def main() -> int:
    if sys.argv[1:2] == ["tool-server"]:
        tool_server(sys.argv[2:])
        return 0
    if sys.argv[1:2] == ["http-farm"]:
        asyncio.run(farm(20))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("part", choices=[*PARTS, "all"], nargs="?", default="all")
    p.add_argument("--sizes", type=int, nargs="+", help="sizes of the one part chosen")
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; Python {sys.version.split()[0]}")
    for name, (fn, sizes) in PARTS.items():
        if args.part in (name, "all"):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fn(sorted(args.sizes or sizes), Path(tmp))
                print(f"\n({name}: {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
