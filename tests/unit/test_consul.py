"""The Consul-compatible API's parts that need no gateway: Consul service definitions read into
registrations (keys in any case, durations, checks), the change index and its waits, TTL
checks in the service mesh and the reaper of critical instances on clocks the tests move, and
`consul://` given as a registry."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from meshgate.api.consul_agent import (
    CHECK_ID,
    CHECK_NAME,
    DEREGISTER_AFTER,
    WARNING_WEIGHT,
    consul_meta,
    duration,
    read_definition,
)
from meshgate.api.consul_state import CriticalReaper
from meshgate.api.consul_views import ChangeIndex
from meshgate.config import ConfigProblems, Registration, load
from meshgate.errors import ConfigError, InvalidInput
from meshgate.registry import EmbeddedRegistry, InstanceRecord, InstanceState, open_registry
from meshgate.registry.store import RegistrationStore
from meshgate.services.mesh import ServiceMesh

pytestmark = pytest.mark.timeout(60)


def test_durations_read_as_go_writes_them() -> None:
    assert duration("10s", "x") == 10
    assert duration("1m30s", "x") == 90
    assert duration("250ms", "x") == 0.25
    assert duration("1h", "x") == 3600
    assert duration("1.5s", "x") == 1.5
    assert duration("0", "x") == 0
    assert duration(2_000_000_000, "x") == 2  # a JSON number is nanoseconds
    for bad in ("", "10", "ten seconds", "10s junk", "-5s", True, None, [1]):
        with pytest.raises(InvalidInput, match="Invalid x"):
            duration(bad, "x")


def test_a_definition_reads_in_any_case_as_consul_does() -> None:
    """py-consul sends lower-case keys, Consul's docs capitalised ones, some tools snake_case."""
    for body in (
        {
            "Name": "web",
            "ID": "web-1",
            "Address": "10.1.2.3",
            "Port": 8080,
            "Tags": ["a"],
            "Meta": {"v": "1"},
            "Weights": {"Passing": 7, "Warning": 2},
            "Check": {
                "CheckID": "web-ttl",
                "Name": "Web alive",
                "TTL": "15s",
                "DeregisterCriticalServiceAfter": "90s",
            },
        },
        {
            "name": "web",
            "id": "web-1",
            "address": "10.1.2.3",
            "port": 8080,
            "tags": ["a"],
            "meta": {"v": "1"},
            "weights": {"passing": 7, "warning": 2},
            "checks": [
                {
                    "check_id": "web-ttl",
                    "name": "Web alive",
                    "ttl": "15s",
                    "deregister_critical_service_after": "90s",
                }
            ],
        },
    ):
        d = read_definition(body, peer="127.0.0.1")
        reg = d.registration
        assert (reg.name, reg.instance_id, reg.base_url) == ("web", "web-1", "http://10.1.2.3:8080")
        assert reg.tags == ["a"] and reg.weight == 7
        assert reg.check.type == "ttl" and reg.check.interval_s == 15
        assert reg.check.healthy_after == reg.check.unhealthy_after == 1
        assert reg.metadata == {
            "v": "1",
            WARNING_WEIGHT: "2",
            CHECK_ID: "web-ttl",
            CHECK_NAME: "Web alive",
            DEREGISTER_AFTER: "90",
        }
        assert consul_meta(reg.metadata) == {"v": "1"}
        assert d.status is None  # Consul's own default: critical until the first update


def test_checks_map_onto_meshgates_executed_checks() -> None:
    base = {"Name": "api", "Address": "127.0.0.1", "Port": 9000}
    http = read_definition(
        {
            **base,
            "Check": {
                "HTTP": "http://localhost:9000/health?deep=1",
                "Interval": "2s",
                "Timeout": "500ms",
                "FailuresBeforeCritical": 3,
            },
        },
        peer=None,
    ).registration
    assert http.check.type == "http" and http.check.path == "/health?deep=1"
    assert (http.check.interval_s, http.check.timeout_s) == (2, 0.5)
    assert http.check.unhealthy_after == 3
    assert http.instance_id == "api" and http.metadata[CHECK_ID] == "service:api"
    https = read_definition(
        {**base, "Check": {"HTTP": "https://127.0.0.1:9000/", "Interval": "5s"}}, peer=None
    ).registration
    assert https.base_url == "https://127.0.0.1:9000" and https.check.path == "/"
    tcp = read_definition(
        {**base, "Check": {"TCP": "127.0.0.1:9000", "Interval": "5s"}}, peer=None
    ).registration
    assert tcp.check.type == "tcp" and tcp.check.timeout_s == 10  # Consul's default
    # No check: a TCP connect every 10 s, not "passing" forever.
    bare = read_definition(base, peer=None).registration
    assert (bare.check.type, bare.check.interval_s) == ("tcp", 10)
    # No Address: the registering client's own, as Consul's agent beside it would give.
    assert read_definition({"Name": "x", "Port": 1}, peer="192.0.2.7").registration.address == (
        "192.0.2.7"
    )
    ttl = read_definition({**base, "Check": {"TTL": "5s", "Status": "passing"}}, peer=None)
    assert ttl.status == "passing"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_ttl_check_is_reported_not_run_and_fails_when_the_reports_stop(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock()
        registry = EmbeddedRegistry()
        mesh = ServiceMesh(
            RegistrationStore(tmp_path / "r.sqlite3"), registry, node="n1", clock=clock
        )
        reg = Registration.model_validate(
            {
                "name": "w",
                "id": "w-1",
                "address": "127.0.0.1",
                "port": _port(),
                "check": {"type": "ttl", "interval_s": 10, "unhealthy_after": 3},
            }
        )
        inst, created = mesh.register(reg)

        def state() -> InstanceState:  # read anew each time (not narrowed by a check)
            return inst.state

        try:
            assert created and inst.task is None  # nothing is run
            assert state() is InstanceState.STARTING and inst.reported is None
            assert mesh.report("w", "w-1", "passing", "fine") is inst
            assert state() is InstanceState.HEALTHY and inst.reported_note == "fine"
            record = registry.get("w-1")
            assert record is not None and record.state is InstanceState.HEALTHY
            mesh.report("w", "w-1", "warning", "slow")
            assert state() is InstanceState.HEALTHY and inst.reported == "warning"
            # Critical moves it at once, whatever unhealthy_after says: it is its own word.
            mesh.report("w", "w-1", "critical", "disk full")
            assert state() is InstanceState.UNHEALTHY
            assert inst.health.last is not None and inst.health.last.error == "disk full"
            mesh.heartbeat("w", "w-1")  # meshgate's own heartbeat passes a ttl check
            assert state() is InstanceState.HEALTHY and inst.reported == "passing"
            clock.now += 9
            assert mesh.expire() == [] and state() is InstanceState.HEALTHY
            clock.now += 2  # 11 s without a report: past the TTL of 10 s
            assert mesh.expire() == []  # unhealthy, not removed (no ttl_s)
            assert state() is InstanceState.UNHEALTHY and inst.reported == "critical"
            assert "no report within the TTL" in inst.reported_note
            assert mesh.report("w", "nope", "passing", "") is None
            assert mesh.report("other", "w-1", "passing", "") is None
        finally:
            await mesh.stop()

    asyncio.run(main())


def test_the_reaper_deregisters_what_stays_critical_past_its_bound(tmp_path: Path) -> None:
    async def main() -> None:
        registry = EmbeddedRegistry()
        mesh = ServiceMesh(RegistrationStore(tmp_path / "r.sqlite3"), registry, node="n1")
        clock = Clock(100.0)
        reaper = CriticalReaper(mesh, node="n1", clock=clock)
        registry.subscribe(reaper.followed)
        port = _port()

        def reg(id_: str, after: str | None) -> Registration:
            meta = {DEREGISTER_AFTER: after} if after else {}
            return Registration.model_validate(
                {
                    "name": "w",
                    "id": id_,
                    "address": "127.0.0.1",
                    "port": port,
                    "metadata": meta,
                    "check": {"type": "ttl", "interval_s": 3600},
                }
            )

        try:
            mesh.register(reg("bounded", "30"))
            mesh.register(reg("recovers", "30"))
            mesh.register(reg("unbounded", None))
            clock.now += 20
            mesh.report("w", "recovers", "passing", "")
            assert reaper.reap() == []
            clock.now += 15  # 35 s critical (from registration) for "bounded"
            assert reaper.reap() == ["bounded"]
            assert set(mesh.instances) == {"recovers", "unbounded"}
            mesh.report("w", "recovers", "critical", "")  # critical again: counted anew
            clock.now += 29
            assert reaper.reap() == []
            clock.now += 2
            assert reaper.reap() == ["recovers"]
            assert set(mesh.instances) == {"unbounded"}
        finally:
            await mesh.stop()

    asyncio.run(main())


def _record(service: str, state: InstanceState, **kw: Any) -> InstanceRecord:
    return InstanceRecord(
        id=f"{service}-1", service=service, kind="http", node="n1", state=state, **kw
    )


def test_the_index_moves_with_what_readers_can_see_and_wakes_waiters() -> None:
    index = ChangeIndex(clock=lambda: 1000.0)
    assert index.current == index.floor == 1_000_000
    index.followed(_record("a", InstanceState.STARTING), None)
    assert index.current == 1_000_001 and index.service("a") == 1_000_001
    assert index.service("b") == index.floor
    same = _record("a", InstanceState.STARTING)
    index.followed(same, same)  # nothing changed: no move
    assert index.current == 1_000_001
    index.followed(_record("a", InstanceState.HEALTHY), same)
    assert index.service("a") == 1_000_002
    node = InstanceRecord(
        id="_node",
        service="meshgate-nodes",
        kind="node",
        node="n2",
        state=InstanceState.HEALTHY,
        metadata={"load": 1, "servers": {"m": {"healthy": 1, "total": 1}}},
    )
    index.followed(node, None)
    assert index.service("m") == 1_000_003
    renewed = dataclasses.replace(node, metadata={**node.metadata, "load": 5})
    index.followed(renewed, node)  # a lease renewed with another load: not news
    assert index.current == 1_000_003

    async def waits() -> None:
        started = asyncio.get_running_loop().time()
        await index.wait_past(index.current, None, 0.05)  # nothing changes: the wait runs out
        assert asyncio.get_running_loop().time() - started >= 0.05
        await index.wait_past(index.current - 1, None, 60)  # already past: at once
        waiter = asyncio.ensure_future(index.wait_past(index.service("b"), "b", 60))
        await asyncio.sleep(0)
        index.touch("a")  # another service: "b" waits on
        for _ in range(5):  # let the waiter wake and look
            await asyncio.sleep(0)
        assert not waiter.done()
        index.touch("b")
        await asyncio.wait_for(waiter, 10)
        closing = asyncio.ensure_future(index.wait_past(index.current, None, 60))
        await asyncio.sleep(0)
        index.close()  # shutting down: every waiter answers now
        await asyncio.wait_for(closing, 10)

    asyncio.run(waits())


def test_consul_as_a_registry_points_to_the_consul_compatible_api(tmp_path: Path) -> None:
    policy = tmp_path / "meshgate.toml"
    policy.write_text('[mesh]\nregistry = "consul://user:pw@127.0.0.1:8500"\n')
    with pytest.raises(ConfigProblems) as e:
        load(None, policy, environ={})
    text = str(e.value)
    assert "Consul-compatible HTTP API" in text and "CONSUL_HTTP_ADDR" in text
    assert "pw" not in text  # the URL's password is not repeated
    with pytest.raises(ConfigProblems, match="Consul-compatible"):
        load(None, None, overrides={"registry": "consul://127.0.0.1:8500"}, environ={})
    with pytest.raises(ConfigError, match="CONSUL_HTTP_ADDR"):
        open_registry("consul://127.0.0.1:8500", node="n1")


def test_the_consul_table_is_read_and_checked(tmp_path: Path) -> None:
    policy = tmp_path / "meshgate.toml"
    policy.write_text('[consul]\nport = 8500\ndatacenter = "east"\nmax_wait_s = 60\n')
    settings = load(None, policy, environ={})
    assert settings.consul.port == 8500 and settings.consul.datacenter == "east"
    assert settings.consul.max_wait_s == 60 and settings.consul.enabled
    assert load(None, None, environ={}).consul.port is None  # off by default
    for text, problem in (
        ("[consul]\nmax_wait_s = 601\n", "consul.max_wait_s"),
        ("[consul]\nport = 70000\n", "consul.port"),
        ('[consul]\ndatacenter = "a b"\n', "consul.datacenter"),
        ("[consul]\nbogus = 1\n", "consul.bogus: unknown key"),
        ("consul = 1\n", "consul: expected a table"),
    ):
        policy.write_text(text)
        with pytest.raises(ConfigProblems, match=problem.replace(".", r"\.")):
            load(None, policy, environ={})
