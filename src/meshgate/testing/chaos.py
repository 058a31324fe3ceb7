"""Load through a cluster's HAProxy while a fault is injected, and what it did to the calls.

    result = asyncio.run(run_scenario(cluster, "kill", kill_node(0), duration_s=10))

The load is a mix of REST calls to the fault server's read-only `echo` (retry-safe: the
gateway may send it again elsewhere), to its `write` (not retry-safe: a failure after it
reached the server is a 502, never a second run), and task enqueues of `write` (acknowledged
with 202 once Redis holds them). Every `write` carries a key that the fault server logs when it
runs, so executions are counted over every node, a killed one's too.

The calls go to `server` (`fault` unless told; any server running the fault server), and the
read-only kind may be another tool (`sleep`, to hold instances busy).

A fault is any `async (cluster) -> None` started `fault_at_s` into the load: `kill_node`,
`partition`, `restart_redis`, `kill_redis_primary` (a failover under Sentinel) here. A fault
may also return calls of its own, counted with the load's: `burst` is a second load for a
while, which is how a pool is made to scale up and then down. `marks` (a dict the caller
gives) receives named moments of a fault, such as a node ready again, as monotonic times.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from meshgate.testing.cluster import Cluster

Fault = Callable[[Cluster], Awaitable[list["Outcome"] | None]]
ENQUEUE = "/api/v1/mesh/v2/enqueue"
FINAL = {"succeeded", "failed", "cancelled", "dead"}
CLEAR = {502, 503}  # the only failures a caller of a non-retry-safe call may see


@dataclass
class Outcome:
    """One call of the load: what, when (monotonic seconds) and the HTTP status (0: none)."""

    kind: str
    start: float
    end: float
    status: int
    key: str = ""
    task_id: str = ""
    error: str = ""  # without a status: the client's exception (ReadTimeout, ReadError...)
    problem: str = ""  # a failure's problem type (`no-healthy-instance`...)

    @property
    def ok(self) -> bool:
        return self.status in (200, 202)


@dataclass
class Result:
    """What a scenario did to the calls; see docs/operations.md for each number."""

    name: str
    nodes: int
    duration_s: float
    calls: int
    calls_per_s: float
    echo_calls: int
    echo_ok: int
    echo_success: float
    echo_errors: dict[str, int]
    write_errors: dict[str, int]
    enqueue_errors: dict[str, int]
    problems: dict[str, int]
    """Failures by status and problem type, such as `503 no-healthy-instance`."""
    unclear_errors: int
    """Failures of writes and enqueues that are not a clear 502 or 503 (timeouts, resets)."""
    writes_ok: int
    writes_duplicated: int
    tasks_acked: int
    tasks_final: dict[str, int]
    tasks_lost: int
    tasks_duplicated: int
    duplicated_attempts: list[int]
    """The attempts of each task run twice: a task runs again only when an attempt of it was
    cut short (its node died, or the call broke after it reached the server), so never 1
    (-1: its view was never read)."""
    errors_before_fault: int
    recovery_s: float | None
    """From the fault's start to the end of the last failed call; None: nothing failed."""
    p50_ms: float
    p99_ms: float
    slowest_failure_s: float = 0.0
    """The longest a failed call took: an error that is clear but slow holds its caller."""
    marks_s: dict[str, float] = field(default_factory=dict)
    """The fault's named moments, in seconds from its start."""
    failures: list[str] = field(default_factory=list)
    """The first failed calls: kind, start and end (seconds from the fault), status or error."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Load:
    """What the callers call: `server`'s `read` tool (read-only; `echo` with a text, or
    another with `read_args`), its `write`, and enqueues of its `write`."""

    server: str = "fault"
    read: str = "echo"
    read_args: tuple[tuple[str, Any], ...] = ()

    def path(self, tool: str) -> str:
        return f"/api/v1/mcp/servers/{self.server}/tools/{tool}"


async def _one(client: httpx.AsyncClient, kind: str, load: Load) -> Outcome:
    key = f"{kind[0]}-{uuid.uuid4().hex[:16]}"
    body: dict[str, Any]
    if kind == "echo":
        args = dict(load.read_args) if load.read_args else {"text": key}
        path, body = load.path(load.read), {"arguments": args}
    elif kind == "write":
        path, body = load.path("write"), {"arguments": {"key": key}}
    else:
        path = ENQUEUE
        body = {
            "target": {"server": load.server, "tool": "write", "arguments": {"key": key}},
            "max_attempts": 5,
        }
    start = time.monotonic()
    task_id = error = problem = ""
    try:
        r = await client.post(path, json=body)
        status = r.status_code
        if status == 202:
            task_id = str(r.json()["task_id"])
        elif status >= 400 and r.headers.get("content-type", "").startswith(
            "application/problem+json"
        ):
            problem = str(r.json().get("type", "")).rsplit("/", 1)[-1]
    except httpx.HTTPError as e:
        status, error = 0, type(e).__name__
    return Outcome(kind, start, time.monotonic(), status, key, task_id, error, problem)


async def drive(
    url: str,
    duration_s: float,
    *,
    concurrency: int = 16,
    mix: tuple[float, float, float] = (0.7, 0.15, 0.15),
    timeout_s: float = 20.0,
    seed: int = 1,
    load: Load = Load(),
) -> list[Outcome]:
    """Closed-loop load: `concurrency` callers, each sending its next call when the last one
    ends, for `duration_s`; `mix` is the share of echo, write and enqueue."""
    rng = random.Random(seed)
    out: list[Outcome] = []
    end = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def caller() -> None:
            while time.monotonic() < end:
                kind = rng.choices(("echo", "write", "enqueue"), weights=mix)[0]
                out.append(await _one(client, kind, load))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return out


async def settle(
    url: str, task_ids: list[str], deadline_s: float, attempts: dict[str, int] | None = None
) -> dict[str, str]:
    """Each task's last known status, waiting (long polls) until all are final or the
    deadline passes; `attempts`, if given, receives each task's attempts as last read."""
    status: dict[str, str] = {}
    end = time.monotonic() + deadline_s
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=deadline_s + 10) as client:

        async def one(task_id: str) -> None:
            async with gate:
                while (left := end - time.monotonic()) > 0:
                    try:
                        r = await client.get(
                            f"/api/v1/mesh/v2/task/{task_id}", params={"wait_s": int(left) or 1}
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(0.2)  # a node going away; ask another
                        continue
                    if r.status_code == 200:
                        view = r.json()
                        status[task_id] = str(view["status"])
                        if attempts is not None:
                            attempts[task_id] = int(view["attempts"])
                        if status[task_id] in FINAL:
                            return
                    else:
                        status.setdefault(task_id, f"http {r.status_code}")
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(t) for t in task_ids))
    return status


def _errors(outcomes: list[Outcome], kind: str) -> dict[str, int]:
    counts = Counter(str(o.status or o.error) for o in outcomes if o.kind == kind and not o.ok)
    return dict(sorted(counts.items()))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_scenario(
    cluster: Cluster,
    name: str,
    fault: Fault | None = None,
    *,
    duration_s: float = 10.0,
    fault_at_s: float = 2.0,
    concurrency: int = 16,
    mix: tuple[float, float, float] = (0.7, 0.15, 0.15),
    settle_s: float = 30.0,
    load: Load = Load(),
    marks: dict[str, float] | None = None,
) -> Result:
    """Load for `duration_s`, `fault` started `fault_at_s` into it; then every acknowledged
    task waited for (up to `settle_s`) and every `write` counted. `marks`: the dict the
    fault was given to note its moments in."""
    running = asyncio.ensure_future(
        drive(cluster.url, duration_s, concurrency=concurrency, mix=mix, load=load)
    )
    fault_start = float("inf")
    fault_task: asyncio.Future[list[Outcome] | None] | None = None
    if fault is not None:
        done, _ = await asyncio.wait({running}, timeout=fault_at_s)
        if not done:
            fault_start = time.monotonic()
            fault_task = asyncio.ensure_future(fault(cluster))
    outcomes = await running
    if fault_task is not None:
        outcomes += await fault_task or []
    acked = [o for o in outcomes if o.kind == "enqueue" and o.status == 202]
    attempts: dict[str, int] = {}
    final = await settle(cluster.url, [o.task_id for o in acked], settle_s, attempts)
    counts = await asyncio.to_thread(cluster.write_counts)
    twice = [o.task_id for o in acked if counts.get(o.key, 0) > 1]
    echo = [o for o in outcomes if o.kind == "echo"]
    failed = [o for o in outcomes if not o.ok]
    after = [o.end for o in failed if o.end >= fault_start]
    span = max(o.end for o in outcomes) - min(o.start for o in outcomes) if outcomes else 0.0
    latencies = [(o.end - o.start) * 1000 for o in echo if o.ok]
    origin = fault_start if fault is not None and fault_start != float("inf") else 0.0
    failed.sort(key=lambda o: o.end)
    return Result(
        name=name,
        nodes=len(cluster.nodes),
        duration_s=round(span, 2),
        calls=len(outcomes),
        calls_per_s=round(len(outcomes) / span, 1) if span else 0.0,
        echo_calls=len(echo),
        echo_ok=sum(o.ok for o in echo),
        echo_success=sum(o.ok for o in echo) / len(echo) if echo else 1.0,
        echo_errors=_errors(outcomes, "echo"),
        write_errors=_errors(outcomes, "write"),
        enqueue_errors=_errors(outcomes, "enqueue"),
        problems=dict(
            sorted(Counter(f"{o.status or o.error} {o.problem}".strip() for o in failed).items())
        ),
        unclear_errors=sum(1 for o in failed if o.kind != "echo" and o.status not in CLEAR),
        writes_ok=sum(1 for o in outcomes if o.kind == "write" and o.ok),
        writes_duplicated=sum(
            1 for o in outcomes if o.kind == "write" and counts.get(o.key, 0) > 1
        ),
        tasks_acked=len(acked),
        tasks_final=dict(Counter(final.get(o.task_id, "unknown") for o in acked)),
        tasks_lost=sum(1 for o in acked if final.get(o.task_id) not in FINAL),
        tasks_duplicated=len(twice),
        duplicated_attempts=[attempts.get(t, -1) for t in twice],
        errors_before_fault=sum(1 for o in failed if o.end < fault_start),
        recovery_s=round(max(after) - fault_start, 2) if after else None,
        p50_ms=round(_percentile(latencies, 0.5), 1),
        p99_ms=round(_percentile(latencies, 0.99), 1),
        slowest_failure_s=round(max((o.end - o.start for o in failed), default=0.0), 2),
        marks_s={k: round(v - origin, 2) for k, v in (marks or {}).items()},
        failures=[
            f"{o.kind} {o.start - origin:+.2f}..{o.end - origin:+.2f} {o.status or o.error}"
            for o in failed[:20]
        ],
    )


# -- faults -----------------------------------------------------------------------------------


def kill_node(
    index: int, *, restart_after_s: float | None = None, marks: dict[str, float] | None = None
) -> Fault:
    """kill -9 of node `index`'s gateway; started again after `restart_after_s` if given
    (`marks["restarted"]`: when its start began; `marks["ready"]`: when the harness saw its
    /readyz answer 200, which under load may be late by a second or more)."""

    async def fault(cluster: Cluster) -> None:
        node = cluster.nodes[index]
        await asyncio.to_thread(cluster.kill, node)
        if restart_after_s is not None:
            await asyncio.sleep(restart_after_s)  # how long the node stays dead
            if marks is not None:
                marks["restarted"] = time.monotonic()
            await asyncio.to_thread(cluster.start_node, node)
            if marks is not None:
                marks["ready"] = time.monotonic()

    return fault


def partition(index: int, seconds: float) -> Fault:
    """Node `index` cut off the bridge for `seconds`, then joined again."""

    async def fault(cluster: Cluster) -> None:
        node = cluster.nodes[index]
        await asyncio.to_thread(cluster.link_down, node)
        try:
            await asyncio.sleep(seconds)  # the partition's length
        finally:
            await asyncio.to_thread(cluster.link_up, node)

    return fault


def restart_redis(down_s: float = 1.0) -> Fault:
    """Redis killed (SIGKILL) and started again after `down_s` with its append-only file."""

    async def fault(cluster: Cluster) -> None:
        await asyncio.to_thread(cluster.restart_redis, down_s)

    return fault


def kill_redis_primary(marks: dict[str, float] | None = None) -> Fault:
    """SIGKILL of the Redis primary of a cluster under Sentinel; `marks["promoted"]`: when the
    sentinels named a replica primary and it took writes."""

    async def fault(cluster: Cluster) -> None:
        sentinel = cluster.sentinel
        if sentinel is None:
            raise RuntimeError("the cluster runs no Sentinel (Cluster(sentinel=True))")
        old = await asyncio.to_thread(sentinel.kill_primary)
        await asyncio.to_thread(sentinel.wait_promoted, old)
        if marks is not None:
            marks["promoted"] = time.monotonic()

    return fault


def burst(seconds: float, concurrency: int, load: Load, *, seed: int = 2) -> Fault:
    """A second closed-loop load of `concurrency` callers for `seconds`, counted with the
    first: a pool's demand rises at the fault and falls back after it."""

    async def fault(cluster: Cluster) -> list[Outcome]:
        return await drive(cluster.url, seconds, concurrency=concurrency, seed=seed, load=load)

    return fault


async def watch_pools(cluster: Cluster, server: str, stop: asyncio.Event) -> dict[str, Any]:
    """Each node's `server` pool, looked at every 0.2 s until `stop`: the most instances it
    had taking calls (`peak`) and in any state (`processes`, draining ones too), how many it
    ended with, and the successive numbers of instances it wanted (`desired`)."""
    peak: dict[str, int] = {}
    processes: dict[str, int] = {}
    last: dict[str, int] = {}
    desired: dict[str, list[int]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            for node in cluster.nodes:
                try:
                    r = await client.get(f"{node.url}/api/v1/mcp/servers/{server}")
                    view = r.json()
                except (httpx.HTTPError, ValueError):
                    continue  # a node going away or starting
                # The view lists the other nodes' instances too (`remote`): not this pool's.
                own = [i for i in view["instances"] if not i.get("remote")]
                taking = [i for i in own if i["state"] == "healthy"]
                peak[node.name] = max(peak.get(node.name, 0), len(taking))
                processes[node.name] = max(processes.get(node.name, 0), len(own))
                last[node.name] = len(own)
                wanted = int(view["scaling"]["desired"])
                if desired.setdefault(node.name, [wanted])[-1] != wanted:
                    desired[node.name].append(wanted)
            if stop.is_set():
                return {"peak": peak, "processes": processes, "last": last, "desired": desired}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
