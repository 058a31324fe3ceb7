"""A fixed request rate held through each entry of the gateway, open loop, for a minute.

    .venv/bin/python bench/bench_sustained.py [--rate 1000] [--duration 60] [--connections 64]
        [--entries control mcp mcp-server rest proxy register heartbeat enqueue enqueue-redis]
        [--search 750 500 250] [--search-duration 30] [--task-concurrency 8]

The load comes from this script run as `gen SPEC` in a process of its own (aiohttp on uvloop,
`--connections` keep-alive connections): request i is due at start + i / rate whatever became
of the ones before, and its latency runs from that due time to the last byte of its answer, so
a stall shows in the latency of every request it delays (no coordinated omission). The
generator also reports its own lag (how late it dispatched a request): the `control` row, a
trivial uvicorn server with no gateway in front, shows whether it holds the rate at all.

Entries, each on a gateway of its own (defaults, but `[mesh] max_queued_tasks = 200000`
so that a minute of enqueues is not refused, and `max_in_flight = 64` on the server and the
service; no `[[limits]]` are configured, so no rate limit applies):

- mcp: `/mcp` (every server), `tools/call` of `s__echo` (the fault server), one 2025-11-25
  session for every request; mcp-server: the same on `/mcp/s` as `echo`;
- rest: `POST /api/v1/mcp/servers/s/tools/echo`, the reference;
- proxy: `GET /api/v1/mesh/v2/call/web/hello` to a uvicorn backend registered over
  `POST /register` with an http check;
- register: every request registers a new instance (ids r0, r1, ...; 100 service names;
  `check.type = ttl`, so no check runs against the 60 000 instances);
- heartbeat: `PUT .../instances/{id}/heartbeat` over a fixed set of 1000 instances
  registered before the run with `ttl_s`;
- enqueue / enqueue-redis: `POST /enqueue` of the echo call (embedded SQLite queue, or a
  redis-server started for the run); `/metrics` is read every second to follow the tasks
  until every one is final (or `--drain-timeout` passes): tasks done per second while the
  load ran, the backlog when it stopped, the time to drain it.

An entry that misses the target (p95 < 100 ms, no errors) at `--rate` is run again at each
`--search` rate, highest first, for `--search-duration` seconds, until one holds.
Everything runs on loopback; each process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench_mcp import open_session
from bench_proxy import run_backend
from meshgate.testing.gateway import GatewayProcess, start_gateway
from meshgate.testing.redis_server import RedisServer

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FAULT = [sys.executable, "-m", "meshgate.testing.fault_server"]
V2 = "/api/v1/mesh/v2"
JSON = {"Content-Type": "application/json"}
TARGET_P95_MS = 100.0
Result = dict[str, Any]


# -- the generator (runs in its own process) -----------------------------------------------


def body_of(kind: str, i: int, spec: dict[str, Any]) -> bytes | None:
    """Request i's body: a fresh JSON-RPC id, a new instance id, or the same body each time."""
    if kind == "mcp":
        params = {"name": spec["tool"], "arguments": {"text": "hi"}}
        msg = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
        return json.dumps(msg).encode()
    if kind == "register":
        reg = {
            "name": f"reg-{i % 100}",
            "id": f"r{i}",
            "url": spec["backend"],
            "check": {"type": "ttl", "interval_s": 3600},
        }
        return json.dumps(reg).encode()
    body = spec.get("body")
    return None if body is None else json.dumps(body).encode()


def answered(kind: str, status: int, data: bytes) -> bool:
    """Whether an answer is a success of its entry (an MCP error or isError is not)."""
    if status not in (200, 201, 202):
        return False
    if kind == "mcp":
        return b'"result"' in data and b'"isError":true' not in data
    if kind == "rest":
        return b'"isError":true' not in data
    return True


async def generate(spec: dict[str, Any]) -> Result:
    """Open-loop load: request i is sent at its due time, timed from it."""
    import aiohttp

    rate, n = float(spec["rate"]), int(spec["rate"] * spec["duration"])
    kind, method, url = spec["kind"], spec["method"], spec["url"]
    headers, modulo = spec.get("headers", {}), spec.get("modulo")
    now = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    latencies: list[tuple[float, float]] = []  # (due offset s, latency ms) of each success
    lags: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=spec["connections"], ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, due: float) -> None:
            sent = now()
            lags.append((sent - due) * 1000)
            due = min(due, sent)  # uvloop's timers may wake a little early: time from the send
            target = url.format(n=i % modulo) if modulo else url
            try:
                async with session.request(
                    method, target, data=body_of(kind, i, spec), headers=headers
                ) as r:
                    data = await r.read()
                    ok = answered(kind, r.status, data)
                    if not ok:
                        errors[f"{r.status} {data[:120]!r}"] += 1
            except (aiohttp.ClientError, TimeoutError) as e:
                errors[type(e).__name__] += 1
                return
            if ok:
                latencies.append((due - start, (now() - due) * 1000))

        start = now() + 0.1
        pending: set[asyncio.Task[None]] = set()
        for i in range(n):
            due = start + i / rate
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent_s = now() - start
        if pending:
            await asyncio.wait(pending, timeout=spec["timeout"] + 5)
        elapsed = now() - start
    lat = sorted(ms for _, ms in latencies)
    windows = []  # p95 of each 10 s of due times: a drift shows here
    for w in range(0, int(spec["duration"]), 10):
        inside = sorted(ms for t, ms in latencies if w <= t < w + 10)
        windows.append(round(pct(inside, 95), 1))
    return {
        "n": n,
        "ok": len(lat),
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "max": lat[-1] if lat else 0.0,
        "achieved": len(lat) / elapsed,
        "p95_by_10s": windows,
        "sent_s": sent_s,
        "elapsed_s": elapsed,
        "lag_p99_ms": pct(sorted(lags), 99),
        "lag_max_ms": max(lags, default=0.0),
        "gen_cpu": time.process_time() / elapsed,
        "errors": dict(errors.most_common(5)),
        "error_count": sum(errors.values()) + len(pending),
    }


def gen_main(spec_json: str) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(generate(json.loads(spec_json)))))
    return 0


# -- measuring --------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of sorted values (nearest rank), 0 when there are none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


TASKS_LINE = re.compile(r'^meshgate_tasks\{status="(\w+)"\} ([0-9.e+]+)', re.M)


def task_counts(base: str) -> dict[str, int]:
    text = httpx.get(base + "/metrics", timeout=30).text
    return {m.group(1): int(float(m.group(2))) for m in TASKS_LINE.finditer(text)}


def run_load(
    spec: dict[str, Any], gw: GatewayProcess | None, on_tick: Callable[[float], None] | None
) -> Result:
    """The generator in its own process for one run; the gateway's CPU and RSS around it."""
    pid = gw.proc.pid if gw else None
    cpu0, rss0 = (cpu_s(pid), rss_mib(pid)) if pid else (0.0, 0.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(BENCH)])}
    proc = subprocess.Popen(
        [sys.executable, __file__, "gen", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    t0 = time.monotonic()
    deadline = t0 + spec["duration"] + spec["timeout"] + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if on_tick is not None:
            on_tick(time.monotonic() - t0)
        time.sleep(1.0)
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"generator failed ({proc.returncode})")
    r: Result = json.loads(out)
    r.update(
        rate=spec["rate"],
        duration=spec["duration"],
        gw_cpu=(cpu_s(pid) - cpu0) / wall if pid else 0.0,
        rss=(rss0, rss_mib(pid)) if pid else (0.0, 0.0),
    )
    return r


def holds(r: Result) -> bool:
    return bool(r["p95"] < TARGET_P95_MS and r["error_count"] == 0)


# -- the entries ------------------------------------------------------------------------------


POLICY = (
    '[mesh]\nlog_level = "warning"\nmax_queued_tasks = 200000\n'
    "[servers.s]\nmax_in_flight = 64\n[services.web]\nmax_in_flight = 64\n"
)


def gateway(tmp: Path, name: str, env: dict[str, str] | None = None) -> GatewayProcess:
    workdir = tmp / name
    workdir.mkdir()
    return start_gateway(
        workdir,
        {"s": {"command": FAULT[0], "args": FAULT[1:]}},
        POLICY,
        env=env,
        args=["--log-level", "info"],  # the start-up line tells the port
    )


def register(base: str, body: dict[str, Any]) -> None:
    r = httpx.post(base + V2 + "/register", json=body, timeout=30)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"register refused: {r.status_code} {r.text}")


def wait_healthy(base: str, service: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = httpx.get(f"{base}{V2}/services/{service}", timeout=5)
        if r.status_code == 200 and '"healthy"' in r.text:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{service} not healthy after {timeout} s")


def spec_for(entry: str, gw: GatewayProcess, backend: str) -> dict[str, Any]:
    """What the generator sends for an entry, after the set-up the entry needs."""
    base = gw.url
    echo = {"arguments": {"text": "hi"}}
    if entry in ("mcp", "mcp-server"):
        url = base + ("/mcp" if entry == "mcp" else "/mcp/s")
        headers = open_session(url)
        tool = "s__echo" if entry == "mcp" else "echo"
        return {"kind": "mcp", "method": "POST", "url": url, "headers": headers, "tool": tool}
    if entry == "rest":
        url = base + "/api/v1/mcp/servers/s/tools/echo"
        return {"kind": "rest", "method": "POST", "url": url, "headers": JSON, "body": echo}
    if entry == "proxy":
        register(base, {"name": "web", "url": backend, "check": {"path": "/health"}})
        wait_healthy(base, "web")
        return {"kind": "get", "method": "GET", "url": f"{base}{V2}/call/web/hello"}
    if entry == "register":
        url = base + V2 + "/register"
        return {"kind": "register", "method": "POST", "url": url, "headers": JSON}
    if entry == "heartbeat":
        ttl = {"type": "ttl", "interval_s": 3600}
        for i in range(1000):
            register(
                base, {"name": "hb", "id": f"h{i}", "url": backend, "check": ttl, "ttl_s": 600}
            )
        url = base + V2 + "/services/hb/instances/h{n}/heartbeat"
        return {"kind": "heartbeat", "method": "PUT", "url": url, "modulo": 1000}
    if entry.startswith("enqueue"):
        body = {"target": {"server": "s", "tool": "echo", **echo}}
        url = base + V2 + "/enqueue"
        return {"kind": "enqueue", "method": "POST", "url": url, "headers": JSON, "body": body}
    raise ValueError(entry)


def follow_tasks(
    gw: GatewayProcess, r: Result, samples: list[tuple[float, dict[str, int]]], drain_timeout: float
) -> None:
    """After an enqueue run: wait until no task is waiting or running; what the queue did."""
    t_end = samples[-1][0] if samples else 0.0
    done_at_end = sum(samples[-1][1].get(s, 0) for s in ("succeeded", "failed", "dead"))
    start = time.monotonic()
    counts = task_counts(gw.url)
    while counts.get("queued", 0) + counts.get("running", 0) and (
        time.monotonic() - start < drain_timeout
    ):
        time.sleep(1.0)
        counts = task_counts(gw.url)
    drain = time.monotonic() - start
    backlog = samples[-1][1].get("queued", 0) + samples[-1][1].get("running", 0)
    r.update(
        tasks_per_s_under_load=done_at_end / t_end if t_end else 0.0,
        backlog_at_end=backlog,
        drain_s=drain,
        left=counts.get("queued", 0) + counts.get("running", 0),
        final=counts,
        e2e_tasks_per_s=counts.get("succeeded", 0) / (t_end + drain) if t_end + drain else 0.0,
    )


def run_entry(
    entry: str, rate: float, duration: float, args: argparse.Namespace, tmp: Path, backend: str
) -> Result:
    if entry == "control":
        spec: dict[str, Any] = {"kind": "get", "method": "GET", "url": backend + "/hello"}
        spec.update(rate=rate, duration=duration, connections=args.connections, timeout=10)
        return run_load(spec, None, None)
    env: dict[str, str] = {"MESHGATE_TASK_CONCURRENCY": str(args.task_concurrency)}
    redis = None
    if entry == "enqueue-redis":
        (tmp / f"redis-{rate}").mkdir()
        redis = RedisServer(tmp / f"redis-{rate}").start()
        env["MESHGATE_QUEUE"] = redis.url
    try:
        gw = gateway(tmp, f"{entry}-{rate}", env)
        try:
            spec = spec_for(entry, gw, backend)
            spec.update(rate=rate, duration=duration, connections=args.connections, timeout=10)
            spec["backend"] = backend
            samples: list[tuple[float, dict[str, int]]] = []
            tick = None
            if entry.startswith("enqueue"):

                def tick(t: float) -> None:
                    samples.append((t, task_counts(gw.url)))

            r = run_load(spec, gw, tick)
            if entry.startswith("enqueue"):
                follow_tasks(gw, r, samples, args.drain_timeout)
            return r
        finally:
            gw.stop()
    finally:
        if redis is not None:
            redis.stop()


# -- the report -------------------------------------------------------------------------------


def row(entry: str, r: Result) -> str:
    err = r["error_count"]
    return (
        f"| {entry} | {r['rate']:.0f} | {r['duration']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} "
        f"| {r['p99']:.1f} | {r['max']:.0f} | {err} | {r['achieved']:.0f} "
        f"| {r['lag_p99_ms']:.1f} | {r['gen_cpu']:.2f} | {r['gw_cpu']:.2f} "
        f"| {r['rss'][0]:.0f} -> {r['rss'][1]:.0f} "
        f"| {'yes' if holds(r) else 'no'} |"
    )


def report(results: list[tuple[str, Result]], args: argparse.Namespace) -> str:
    lines = [
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.connections} connections, open loop; task_concurrency {args.task_concurrency}",
        "",
        "| entry | rate/s | s | p50 ms | p95 ms | p99 ms | max ms | errors | achieved/s "
        "| gen lag p99 ms | gen CPU | gateway CPU | RSS MiB | holds |",
        "| --- |" + " ---: |" * 12 + " --- |",
    ]
    lines += [row(entry, r) for entry, r in results]
    lines.append("")
    for entry, r in results:
        lines.append(f"- {entry} @ {r['rate']:.0f}/s: p95 per 10 s {r['p95_by_10s']}")
        if r["errors"]:
            lines.append(f"  errors: {r['errors']}")
        if "drain_s" in r:
            lines.append(
                f"  tasks: {r['tasks_per_s_under_load']:.0f}/s done under load, backlog "
                f"{r['backlog_at_end']} when it stopped, drained in {r['drain_s']:.0f} s "
                f"({r['left']} left), {r['e2e_tasks_per_s']:.0f} tasks/s end to end; "
                f"final {r['final']}"
            )
    return "\n".join(lines)


ENTRIES = [
    "control",
    "mcp",
    "mcp-server",
    "rest",
    "proxy",
    "register",
    "heartbeat",
    "enqueue",
    "enqueue-redis",
]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "gen":
        return gen_main(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--entries", nargs="+", choices=ENTRIES, default=ENTRIES)
    p.add_argument("--search", type=float, nargs="*", default=[750, 500, 250])
    p.add_argument("--search-duration", type=float, default=30)
    p.add_argument("--task-concurrency", type=int, default=8)
    p.add_argument("--drain-timeout", type=float, default=300)
    args = p.parse_args()
    results: list[tuple[str, Result]] = []
    with tempfile.TemporaryDirectory() as tmp, run_backend(1) as backend:
        for entry in args.entries:
            r = run_entry(entry, args.rate, args.duration, args, Path(tmp), backend)
            results.append((entry, r))
            print(row(entry, r), file=sys.stderr, flush=True)
            for rate in [] if holds(r) or entry == "control" else args.search:
                r = run_entry(entry, rate, args.search_duration, args, Path(tmp), backend)
                results.append((entry, r))
                print(row(entry, r), file=sys.stderr, flush=True)
                if holds(r):
                    break
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
