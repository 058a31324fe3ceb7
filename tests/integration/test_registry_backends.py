"""The Registry protocol's behaviour, the same for the embedded and the Redis backend, and
what only a shared backend does: nodes seeing each other, leases, Redis going away."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshgate.registry import EmbeddedRegistry, InstanceRecord, InstanceState, Registry
from meshgate.registry.redis import RedisRegistry
from meshgate.testing.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


def record(
    id_: str, *, node: str = "n1", state: InstanceState = InstanceState.HEALTHY
) -> InstanceRecord:
    return InstanceRecord(id=id_, service=id_.split("-")[0], kind="http", node=node, state=state)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.02)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_the_protocol_behaves_the_same(backend: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start() if backend == "redis" else None

    async def main() -> None:
        reg: Registry = (
            RedisRegistry(server.url, node="n1", lease_s=2) if server else EmbeddedRegistry()
        )
        events: list[tuple[str, str]] = []
        reg.subscribe(lambda new, old: events.append((new.id, new.state.value)))
        await reg.start()
        reg.register(record("api-1"))
        reg.register(record("api-2", state=InstanceState.STARTING))
        assert reg.get("api-1") == record("api-1")
        assert {r.id for r in reg.instances("api")} == {"api-1", "api-2"}
        reg.update(record("api-2"))
        with pytest.raises(KeyError):
            reg.update(record("nope-1"))
        reg.deregister("api-1")
        reg.deregister("api-1")  # twice is harmless
        assert reg.get("api-1") is None
        assert events == [
            ("api-1", "healthy"),
            ("api-2", "starting"),
            ("api-2", "healthy"),
            ("api-1", "stopped"),
        ]
        if server is not None:
            await until(lambda: reg.status()["status"] == "ok")
        assert reg.status()["status"] == "ok" and reg.status()["instances"] == 1
        await reg.stop()
        reg.close()

    try:
        run(main)
    finally:
        if server is not None:
            server.stop()


def test_nodes_see_each_other_and_a_dead_node_expires(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = RedisRegistry(redis_server.url, node="a", lease_s=1.0)
        b = RedisRegistry(redis_server.url, node="b", lease_s=1.0)
        gone: list[str] = []
        b.subscribe(
            lambda new, old: gone.append(new.id) if new.state is InstanceState.STOPPED else None
        )
        await a.start()
        await b.start()
        a.register(record("api-1", node="a"))
        b.register(record("api-9", node="b"))
        await until(lambda: {r.id for r in b.instances()} == {"api-1", "api-9"})
        await until(lambda: {r.node for r in a.instances()} == {"a", "b"})
        assert b.status()["nodes"] == 2 and b.status()["keyspace_events"]
        a.deregister("api-1")
        await until(lambda: "api-1" in gone)
        a.register(record("api-2", node="a"))
        await until(lambda: any(r.id == "api-2" for r in b.instances()))
        # node a dies without a word: its lease runs out and b drops its instances
        assert a._task is not None
        a._task.cancel()
        await until(lambda: "api-2" in gone)
        assert [r.id for r in b.instances()] == ["api-9"]
        await b.stop()

    run(main)


def test_redis_restarted_mid_test(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = RedisRegistry(redis_server.url, node="a", lease_s=1.0)
        b = RedisRegistry(redis_server.url, node="b", lease_s=1.0)
        await a.start()
        await b.start()
        a.register(record("api-1", node="a"))
        await until(lambda: len(b.instances()) == 1)
        redis_server.stop()
        await until(lambda: b.status()["status"] == "stale")
        assert [r.id for r in b.instances()] == ["api-1"]  # the last known view
        assert b.status()["last_error"]
        a.register(record("api-2", node="a"))  # written once Redis is back
        redis_server.start()  # empty: every entry is gone with the old process
        await until(lambda: a.status()["status"] == "ok" and b.status()["status"] == "ok")
        await until(lambda: {r.id for r in b.instances()} == {"api-1", "api-2"})
        await a.stop()
        await until(lambda: b.instances() == [])  # a clean exit removes a node's entries
        await b.stop()

    run(main)


def test_two_gateways_share_a_redis_registry(tmp_path: Path, redis_server: RedisServer) -> None:
    import httpx

    from tests.gateway import fault_server, run_gateway

    env = {"MESHGATE_REGISTRY": redis_server.url, "MESHGATE_REGISTRY_LEASE_S": "1"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    api = "/api/v1/mesh/v2"
    with (
        run_gateway(tmp_path / "a", {"fa": fault_server()}, env=env, node="a") as a,
        run_gateway(tmp_path / "b", {"fb": fault_server()}, env=env, node="b") as b,
    ):
        body = {"name": "planner", "url": "http://127.0.0.1:9", "check": {"type": "tcp"}}
        assert a.http.post(f"{api}/register", json=body).status_code == 201

        async def seen() -> None:
            await until(lambda: httpx.get(f"{b.url}{api}/services/planner").status_code == 200)

        asyncio.run(seen())
        view = b.get(f"{api}/services/planner").json()
        assert view["instances"][0]["node"] == "a" and view["instances"][0]["remote"]
        names = {s["name"] for s in b.get(f"{api}/services").json()["items"]}
        assert {"fa", "fb", "planner"} <= names  # a's MCP server too
        status = b.get(f"{api}/health").json()["registry"]
        assert status["backend"] == "redis" and status["status"] == "ok" and status["nodes"] == 2
        a.process.stop(signal.SIGKILL)  # a dies: its entries expire from b's view

        async def expired() -> None:
            await until(lambda: httpx.get(f"{b.url}{api}/services/planner").status_code == 404)

        asyncio.run(expired())
