"""Load through a cluster's HAProxy while a fault is injected, and what it did to the calls.

    result = asyncio.run(run_scenario(cluster, "kill", kill_node(0), duration_s=10))

The load is a mix of REST calls to the fault server's read-only `echo` (retry-safe: the
gateway may send it again elsewhere), to its `write` (not retry-safe: a failure after it
reached the server is a 502, never a second run), and task enqueues of `write` (acknowledged
with 202 once Redis holds them). Every `write` carries a key that the fault server logs when it
runs, so executions are counted over every node, a killed one's too.

A fault is any `async (cluster) -> None` started `fault_at_s` into the load: `kill_node`,
`partition`, `restart_redis` here; a Redis failover under Sentinel or scaling a pool during
load are new functions of the same shape.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from meshgate.testing.cluster import Cluster

Fault = Callable[[Cluster], Awaitable[None]]
ECHO = "/api/v1/mcp/servers/fault/tools/echo"
WRITE = "/api/v1/mcp/servers/fault/tools/write"
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
    unclear_errors: int
    """Failures of writes and enqueues that are not a clear 502 or 503 (timeouts, resets)."""
    writes_ok: int
    writes_duplicated: int
    tasks_acked: int
    tasks_final: dict[str, int]
    tasks_lost: int
    tasks_duplicated: int
    errors_before_fault: int
    recovery_s: float | None
    """From the fault's start to the end of the last failed call; None: nothing failed."""
    p50_ms: float
    p99_ms: float
    failures: list[str] = field(default_factory=list)
    """The first failed calls: kind, start and end (seconds from the fault), status or error."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _one(client: httpx.AsyncClient, kind: str) -> Outcome:
    key = f"{kind[0]}-{uuid.uuid4().hex[:16]}"
    body: dict[str, Any]
    if kind == "echo":
        path, body = ECHO, {"arguments": {"text": key}}
    elif kind == "write":
        path, body = WRITE, {"arguments": {"key": key}}
    else:
        path = ENQUEUE
        body = {
            "target": {"server": "fault", "tool": "write", "arguments": {"key": key}},
            "max_attempts": 5,
        }
    start = time.monotonic()
    task_id = error = ""
    try:
        r = await client.post(path, json=body)
        status = r.status_code
        if status == 202:
            task_id = str(r.json()["task_id"])
    except httpx.HTTPError as e:
        status, error = 0, type(e).__name__
    return Outcome(kind, start, time.monotonic(), status, key, task_id, error)


async def drive(
    url: str,
    duration_s: float,
    *,
    concurrency: int = 16,
    mix: tuple[float, float, float] = (0.7, 0.15, 0.15),
    timeout_s: float = 20.0,
    seed: int = 1,
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
                out.append(await _one(client, kind))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return out


async def settle(url: str, task_ids: list[str], deadline_s: float) -> dict[str, str]:
    """Each task's last known status, waiting (long polls) until all are final or the
    deadline passes."""
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
                        status[task_id] = str(r.json()["status"])
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
) -> Result:
    """Load for `duration_s`, `fault` started `fault_at_s` into it; then every acknowledged
    task waited for (up to `settle_s`) and every `write` counted."""
    load = asyncio.ensure_future(drive(cluster.url, duration_s, concurrency=concurrency, mix=mix))
    fault_start = float("inf")
    fault_task: asyncio.Future[None] | None = None
    if fault is not None:
        done, _ = await asyncio.wait({load}, timeout=fault_at_s)
        if not done:
            fault_start = time.monotonic()
            fault_task = asyncio.ensure_future(fault(cluster))
    outcomes = await load
    if fault_task is not None:
        await fault_task
    acked = [o for o in outcomes if o.kind == "enqueue" and o.status == 202]
    final = await settle(cluster.url, [o.task_id for o in acked], settle_s)
    counts = await asyncio.to_thread(cluster.write_counts)
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
        unclear_errors=sum(1 for o in failed if o.kind != "echo" and o.status not in CLEAR),
        writes_ok=sum(1 for o in outcomes if o.kind == "write" and o.ok),
        writes_duplicated=sum(
            1 for o in outcomes if o.kind == "write" and counts.get(o.key, 0) > 1
        ),
        tasks_acked=len(acked),
        tasks_final=dict(Counter(final.get(o.task_id, "unknown") for o in acked)),
        tasks_lost=sum(1 for o in acked if final.get(o.task_id) not in FINAL),
        tasks_duplicated=sum(1 for o in acked if counts.get(o.key, 0) > 1),
        errors_before_fault=sum(1 for o in failed if o.end < fault_start),
        recovery_s=round(max(after) - fault_start, 2) if after else None,
        p50_ms=round(_percentile(latencies, 0.5), 1),
        p99_ms=round(_percentile(latencies, 0.99), 1),
        failures=[
            f"{o.kind} {o.start - origin:+.2f}..{o.end - origin:+.2f} {o.status or o.error}"
            for o in failed[:20]
        ],
    )


# -- faults -----------------------------------------------------------------------------------


def kill_node(index: int, *, restart_after_s: float | None = None) -> Fault:
    """kill -9 of node `index`'s gateway; started again after `restart_after_s` if given."""

    async def fault(cluster: Cluster) -> None:
        node = cluster.nodes[index]
        await asyncio.to_thread(cluster.kill, node)
        if restart_after_s is not None:
            await asyncio.sleep(restart_after_s)  # how long the node stays dead
            await asyncio.to_thread(cluster.start_node, node)

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
