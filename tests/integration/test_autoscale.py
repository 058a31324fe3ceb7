"""Autoscaling of real fault-server pools: a burst grows a pool within its bounds, a cool-down
returns it to its minimum, a scale-down lets calls in flight finish, and a pool at zero starts
an instance for the call that finds it empty.

The in-process tests drive the autoscaler with an injected clock (no waiting out windows); the
gateway tests run it on its own loop with small windows.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from meshgate.config import ServerPolicy, ServerSpec
from meshgate.registry.base import InstanceState
from meshgate.registry.embedded import EmbeddedRegistry
from meshgate.router.call import Call
from meshgate.router.core import Router
from meshgate.security.principal import LOCAL
from meshgate.upstream.supervisor import ServerPool, Supervisor
from meshgate.wire.jsonrpc import JSON
from tests.gateway import FAULT_SERVER, Gateway, fault_server, run_gateway, wait_gone
from tests.integration.test_mcp_http import _headers, _initialize

pytestmark = pytest.mark.timeout(120)


class Clock:
    """Time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pooled(policy: dict[str, Any], clock: Clock) -> tuple[Supervisor, Router, ServerPool]:
    # A sampling interval this long leaves every decision to the test's own `scale()` calls.
    policy = {**policy, "autoscale": {"interval_s": 60, **policy.get("autoscale", {})}}
    spec = ServerSpec("f", FAULT_SERVER[0], tuple(FAULT_SERVER[1:]), policy=ServerPolicy(**policy))
    sup = Supervisor([spec], node="test", registry=EmbeddedRegistry(), clock=clock)
    return sup, Router(sup), sup.pools["f"]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def until(pool: ServerPool, check: Callable[[], bool], timeout: float = 30) -> None:
    """Wait on the pool's changes until `check()` holds."""
    async with asyncio.timeout(timeout):
        while not check():
            await pool.wait_changed(0.05)


async def tool(router: Router, name: str, arguments: JSON) -> JSON:
    call = Call(service="f", kind="mcp", target=name, entry="rest", principal=LOCAL)
    return await router.call_tool("f", name, arguments, call=call)


def ready(pool: ServerPool) -> int:
    return len(pool.routable())


def test_a_burst_grows_the_pool_to_what_it_needs_within_max_and_a_cool_down_shrinks_it() -> None:
    async def test() -> None:
        clock = Clock()
        policy = {
            "instances": {"min": 1, "max": 3},
            "max_in_flight": 2,
            "autoscale": {
                "scale_up_in_flight": 1,
                "scale_up_after_s": 5,
                "scale_down_after_s": 30,
            },
        }
        sup, router, pool = pooled(policy, clock)
        await sup.start()
        try:
            assert ready(pool) == 1 and pool.autoscaler.desired == 1
            first_pid = pool.routable()[0].pid
            calls = [asyncio.create_task(tool(router, "sleep", {"seconds": 1.5})) for _ in range(6)]
            await until(pool, lambda: pool.load().in_flight == 2 and pool.waiters == 4)
            assert pool.scale() is None  # busy, but not yet for the window
            clock.now += 5
            up = pool.scale()
            assert up is not None and (up.before, up.after, up.reason) == (1, 3, "in_flight")
            assert "calls in flight per instance > 1" in up.why
            assert len(pool.slots) == 3
            clock.now += 5
            assert pool.scale() is None  # still busy, but at max
            assert len(pool.slots) == 3
            await until(pool, lambda: ready(pool) == 3)
            results = await asyncio.gather(*calls)
            assert all(not r.get("isError") for r in results)

            assert pool.scale() is None  # idle from now on, for the cool-down
            clock.now += 29
            assert pool.scale() is None
            clock.now += 1
            down = pool.scale()
            assert down is not None and (down.before, down.after, down.reason) == (3, 1, "idle")
            assert [s.index for s in pool.slots] == [1]
            assert pool.routable()[0].pid == first_pid
            await until(pool, lambda: len(pool._slots) == 1)
            view = pool.view()
            assert [i["id"] for i in view["instances"]] == ["f-1"]
            assert view["scaling"]["desired"] == 1
            assert view["scaling"]["last_decision"]["reason"] == "idle"
        finally:
            await sup.stop()

    run(test)


def test_a_scale_down_drains_a_busy_instance_and_never_fails_its_call() -> None:
    async def test() -> None:
        clock = Clock()
        policy = {
            "instances": {"min": 1, "max": 2},
            "max_in_flight": 3,
            "autoscale": {"scale_up_in_flight": 2, "scale_up_after_s": 0, "scale_down_after_s": 10},
        }
        sup, router, pool = pooled(policy, clock)
        await sup.start()
        try:
            burst = [asyncio.create_task(tool(router, "sleep", {"seconds": 1})) for _ in range(3)]
            await until(pool, lambda: pool.load().in_flight == 3)
            up = pool.scale()
            assert up is not None and up.after == 2
            await until(pool, lambda: ready(pool) == 2)
            await asyncio.gather(*burst)

            # One call on each instance (least connections); `slow_write` is not retry-safe,
            # so a call broken by the scale-down would fail rather than go elsewhere.
            writes = [
                asyncio.create_task(tool(router, "slow_write", {"seconds": 1.5})) for _ in range(2)
            ]
            await until(pool, lambda: [i.in_flight for i in pool.routable()] == [1, 1])
            victim = pool.routable()[1]
            assert pool.scale() is None
            clock.now += 10
            down = pool.scale()
            assert down is not None and (down.after, down.reason) == (1, "underused")
            assert victim.state is InstanceState.DRAINING and victim.in_flight == 1
            assert victim not in pool.routable()
            shown = {i["id"]: i["state"] for i in pool.view()["instances"]}
            assert shown == {"f-1": "healthy", "f-2": "draining"}
            assert all(not r.get("isError") for r in await asyncio.gather(*writes))
            await until(pool, lambda: victim.state is InstanceState.STOPPED)
            assert victim.pid is not None and not wait_gone({victim.pid}, 10)
            assert len(pool.slots) == 1
            assert [i["id"] for i in pool.view()["instances"]] == ["f-1"]
        finally:
            await sup.stop()

    run(test)


def test_a_pool_never_grows_past_max_nor_shrinks_below_min() -> None:
    async def test() -> None:
        clock = Clock()
        policy = {
            "instances": {"min": 2, "max": 2},
            "max_in_flight": 1,
        }
        sup, router, pool = pooled(policy, clock)
        await sup.start()
        try:
            assert not pool.autoscaler.scales and len(pool.slots) == 2
            calls = [asyncio.create_task(tool(router, "sleep", {"seconds": 0.5})) for _ in range(4)]
            await until(pool, lambda: pool.waiters == 2)
            clock.now += 3600
            assert pool.scale() is None and len(pool.slots) == 2
            await asyncio.gather(*calls)
            clock.now += 3600
            assert pool.scale() is None and len(pool.slots) == 2
        finally:
            await sup.stop()

    run(test)


MIN_ZERO = """
[servers.f]
instances = {min = 0, max = 1}
[servers.f.autoscale]
interval_s = 0.05
scale_down_after_s = 0.3
"""

SCALING = re.compile(r"^f: scaling (\d+) -> (\d+) \((.*)\)$")


def decisions(gw: Gateway) -> list[tuple[int, int, str]]:
    out = []
    for line in list(gw.log):
        if line.startswith("{"):
            m = SCALING.match(str(json.loads(line)["msg"]))
            if m:
                out.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return out


def test_a_pool_at_min_zero_has_no_process_when_idle_and_a_call_starts_one(
    tmp_path: Path,
) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}, MIN_ZERO) as gw:
        view = gw.wait_for("f", lambda v: v["scaling"]["desired"] == 0 and not v["instances"])
        assert (view["scaling"]["min"], view["scaling"]["max"]) == (0, 1)
        assert view["scaling"]["last_decision"]["reason"] == "idle"
        assert "echo" in view["tools"]  # the catalog outlives the process
        health = gw.get("/api/v1/mesh/v2/health").json()
        assert health["status"] == "healthy", health  # scaled to zero as it should be: not down
        assert health["services"]["f"]["desired"] == 0

        started = time.monotonic()
        r = gw.call("f", "echo", {"text": "cold"})
        assert r.status_code == 200, r.text
        assert r.json()["content"][0]["text"] == "cold"
        elapsed = time.monotonic() - started
        view = gw.server("f")
        if view["instances"]:  # it may have scaled to zero again already
            [inst] = view["instances"]
            assert inst["pid"] is not None
        assert any(why.startswith("a call arrived") for _, _, why in decisions(gw))
        assert elapsed < 30  # within its deadline, not a 503 after restart_wait_s

        metrics = gw.get("/metrics").text
        assert (
            'meshgate_autoscale_decisions_total{direction="up",reason="demand",service="f"} 1.0'
            in metrics
        )
        assert 'meshgate_instances_desired{service="f"}' in metrics


BURST = """
[servers.f]
instances = {min = 1, max = 3}
max_in_flight = 2
[servers.f.autoscale]
interval_s = 0.05
scale_up_in_flight = 1
scale_up_after_s = 0.1
scale_down_after_s = 0.5
"""


def test_a_burst_through_the_gateway_scales_up_and_back_to_min(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}, BURST) as gw:
        [first] = gw.instances("f")
        sizes: list[int] = []
        pids: set[int] = set()

        def seen(view: dict[str, Any]) -> dict[str, Any]:
            sizes.append(len(view["instances"]))
            pids.update(i["pid"] for i in view["instances"] if i["pid"] is not None)
            return view

        def call(_: int) -> int:
            return gw.call("f", "sleep", {"seconds": 2}).status_code

        with ThreadPoolExecutor(6) as pool:
            results = pool.map(call, range(6))
            grown = gw.wait_for("f", lambda v: len(seen(v)["instances"]) > 1)
            assert grown["scaling"]["last_decision"]["direction"] == "up"
            statuses = list(results)
        assert statuses == [200] * 6
        view = gw.wait_for(
            "f", lambda v: seen(v)["scaling"]["desired"] == 1 and len(v["instances"]) == 1
        )
        assert view["instances"][0]["pid"] == first["pid"]
        assert view["scaling"]["last_decision"]["reason"] == "idle"
        assert max(sizes) <= 3
        made = decisions(gw)
        assert made[0][:2] in ((1, 2), (1, 3)) and made[-1][1] == 1, made
        assert all(after <= 3 for _, after, _ in made)
        assert not wait_gone(pids - {first["pid"]}, 10)  # the retired processes are stopped


def test_a_dedicated_pool_at_zero_spares_starts_one_for_a_new_session(tmp_path: Path) -> None:
    policy = MIN_ZERO.replace("[servers.f]\n", '[servers.f]\nmode = "dedicated"\n')
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        gw.wait_for("f", lambda v: v["scaling"]["desired"] == 0 and not v["instances"])
        sid = _initialize(gw.http, "/mcp/f")
        h = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pid"}}
        r = gw.http.post("/mcp/f", headers=h, json=msg)
        assert r.status_code == 200, r.text
        pid = int(r.json()["result"]["content"][0]["text"])
        view = gw.server("f")
        assert [i["pid"] for i in view["instances"] if i["dedicated"]] == [pid]
        assert any(why.startswith("a call arrived") for _, _, why in decisions(gw))
