"""The Consul-compatible API of a cluster: two gateways sharing one Redis registry. A service
registered through node A's Consul API is discovered through node B's, on A's node, with the
state A's check found; a blocking query on B returns when A's TTL check fails; each node's MCP
servers are services of that node; the nodes and peers are both gateways."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import pytest

from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(120)


def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def client(gw: Gateway) -> consul.Consul:
    host, _, port = gw.url.removeprefix("http://").rpartition(":")
    return consul.Consul(host=host, port=int(port))


def address(gw: Gateway) -> str:
    return gw.url.removeprefix("http://")


def test_a_service_registered_on_one_node_is_discovered_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_REGISTRY": redis_server.url, "MESHGATE_REGISTRY_LEASE_S": "1"}
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    with (
        recording_service() as (service_url, _),
        run_gateway(tmp_path / "a", {"fa": fault_server()}, env=env, node="a") as a,
        run_gateway(tmp_path / "b", {"fb": fault_server()}, env=env, node="b") as b,
    ):
        ca, cb = client(a), client(b)
        port = int(service_url.rpartition(":")[2])
        assert ca.agent.service.register(
            "web",
            service_id="web-1",
            address="127.0.0.1",
            port=port,
            check=consul.Check.ttl("60s"),
        )
        assert ca.agent.check.ttl_pass("service:web-1")

        def passing_on_b() -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = cb.health.service("web", passing=True)[1]
            return entries

        until(lambda: len(passing_on_b()) == 1, "web passing on b")
        [entry] = passing_on_b()
        assert entry["Node"]["Node"] == "a" and entry["Service"]["ID"] == "web-1"
        assert entry["Node"]["Address"] == "127.0.0.1"
        assert entry["Service"]["Port"] == port

        until(lambda: {"fa", "fb"} <= set(cb.catalog.services()[1]), "both MCP servers on b")
        [fa] = cb.health.service("fa", passing=True)[1]
        assert fa["Node"]["Node"] == "a" and fa["Service"]["Tags"] == ["mcp"]
        assert f"{fa['Service']['Address']}:{fa['Service']['Port']}" == address(a)
        assert fa["Service"]["Meta"]["url"] == f"{a.url}/mcp/fa"
        assert sorted(n["Node"] for n in cb.catalog.nodes()[1]) == ["a", "b"]
        assert sorted(cb.status.peers()) == sorted([address(a), address(b)])
        # The agent endpoints are the node's own: b has fb, not a's web.
        assert set(cb.agent.services()) == {"mcp:fb"}

        # A blocking query on b returns when a's TTL check fails.
        index = cb.health.service("web")[0]
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(answer=cb.health.service("web", index=index, wait="90s"))
        )
        thread.start()
        assert ca.agent.check.ttl_fail("service:web-1", notes="down")
        thread.join(60)
        assert not thread.is_alive(), "b's blocking query did not return on a's change"
        new_index, entries = result["answer"]
        assert int(new_index) > int(index)
        assert [e["Checks"][1]["Status"] for e in entries] == ["critical"]
        assert entries[0]["Checks"][1]["Output"] == "unhealthy (checked by node a)"

        # TTL updates and deregistration go to the node it was registered with.
        assert cb.agent.check.ttl_pass("service:web-1") is False  # 404: not b's
        assert cb.agent.service.deregister("web-1") is False
        assert ca.agent.service.deregister("web-1")
        until(lambda: cb.health.service("web")[1] == [], "web gone from b")
