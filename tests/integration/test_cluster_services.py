"""An HTTP service instance's own operations through any node of a cluster of real gateways
on one real redis-server: registered through node A, it is renewed, registered again and
deregistered through node B, each relayed to A as the original caller (A's policy decides);
an id no live node owns is not found; while its dead owner's record lasts, 503."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from meshgate.security import Principal
from meshgate.security.nodes import NodeCredentials
from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, recording_service
from tests.integration.test_cluster import API, SECRET, make_key, node, node_ids, wait_until

pytestmark = pytest.mark.timeout(120)

PATH = f"{API}/services/rec/instances"


def instances(gw: Gateway, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = gw.get(f"{API}/services/rec", headers=headers or {})
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["instances"]
    return out


def owned_by_a(b: Gateway, id_: str, headers: dict[str, str] | None = None) -> bool:
    """Whether B pools A's instance `id_`, and it alone."""
    return [(i["id"], i.get("node")) for i in instances(b, headers)] == [(id_, "node-a")]


def test_an_instance_of_a_is_renewed_and_removed_through_b(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with (
        recording_service() as (service_url, _),
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}) as b,
    ):
        reg = {"name": "rec", "id": "rec-1", "url": service_url, "ttl_s": 60}
        reg["check"] = {"type": "tcp"}
        assert a.http.post(f"{API}/register", json=reg).status_code == 201
        wait_until("B pools A's instance", lambda: owned_by_a(b, "rec-1"))

        # a heartbeat through B renews A's instance (A's view of it answers)
        wait_until(
            "a heartbeat age to show",
            lambda: instances(a)[0]["heartbeat_age_s"] >= 1.0,
        )
        r = b.http.put(f"{PATH}/rec-1/heartbeat")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "rec-1" and "remote" not in r.json()
        assert instances(a)[0]["heartbeat_age_s"] < 1.0
        assert owned_by_a(b, "rec-1"), "B registered it as its own"

        # registering the same id through B goes to A: one owner, A's registration updated
        r = b.http.post(f"{API}/register", json={**reg, "weight": 3})
        assert r.status_code == 200, r.text
        assert [(i["id"], i["weight"]) for i in instances(a)] == [("rec-1", 3)]
        wait_until("B follows A's update", lambda: instances(b)[0]["weight"] == 3)
        assert owned_by_a(b, "rec-1")

        # a client cannot pass itself off as a node that relayed the request
        r = b.http.delete(f"{PATH}/rec-1", headers={"x-meshgate-hops": "1"})
        assert r.status_code == 404, r.text

        # deregistered through B: gone from A and, following A's record, from B
        assert b.http.delete(f"{PATH}/rec-1").status_code == 204
        assert instances(a) == []
        wait_until("rec-1 gone from B", lambda: instances(b) == [])

        # the older API's form, by id alone
        assert a.http.post(f"{API}/register", json={**reg, "id": "rec-2"}).status_code == 201
        wait_until("B pools rec-2", lambda: owned_by_a(b, "rec-2"))
        r = b.http.delete(f"{API}/deregister/rec-2")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "deregistered"
        assert instances(a) == []
        wait_until("rec-2 gone from B", lambda: instances(b) == [])

        # an id no node owns: 404, as a problem
        for r in (
            b.http.put(f"{PATH}/rec-1/heartbeat"),
            b.http.delete(f"{PATH}/rec-1"),
            b.http.delete(f"{API}/deregister/rec-2"),
        ):
            assert r.status_code == 404, r.text
            assert r.headers["content-type"] == "application/problem+json"


POLICY = """
[auth]

[roles.renewer]
allow = ["mesh:register/rec", "mesh:discover"]

[roles.keeper]
allow = ["mesh:register/rec", "mesh:deregister/rec", "mesh:discover"]
"""


def test_the_owner_decides_as_the_original_caller(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    env = {"MESHGATE_CLUSTER_SECRET": SECRET}
    with (
        recording_service() as (service_url, _),
        node(tmp_path, "node-a", url, {"alpha": fault_server()}, POLICY, env) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}, POLICY, env) as b,
    ):
        renewer = {"authorization": f"Bearer {make_key(tmp_path / 'node-a', url, 'r', 'renewer')}"}
        keeper = {"authorization": f"Bearer {make_key(tmp_path / 'node-a', url, 'k', 'keeper')}"}
        reg = {"name": "rec", "id": "rec-1", "url": service_url, "check": {"type": "tcp"}}
        r = a.http.post(f"{API}/register", json=reg, headers=renewer)
        assert r.status_code == 201, r.text
        wait_until("B pools A's instance", lambda: owned_by_a(b, "rec-1", keeper))

        assert b.http.put(f"{PATH}/rec-1/heartbeat", headers=renewer).status_code == 200
        for path in (f"{PATH}/rec-1", f"{API}/deregister/rec-1"):
            r = b.http.delete(path, headers=renewer)
            assert r.status_code == 403, r.text
            assert r.json()["type"].endswith("/forbidden")
        assert b.http.delete(f"{PATH}/rec-1").status_code == 401

        # A itself decides as the caller a node asserts: a signed request for the renewer is
        # refused there, whatever the relaying node allowed
        as_renewer = NodeCredentials(SECRET, "node-b").sign(
            Principal("r", frozenset({"renewer"})), f"{PATH}/rec-1"
        )
        r = a.http.delete(f"{PATH}/rec-1", headers=as_renewer)
        assert r.status_code == 403, r.text
        assert [i["id"] for i in instances(a, keeper)] == ["rec-1"]

        assert b.http.delete(f"{PATH}/rec-1", headers=keeper).status_code == 204
        assert instances(a, keeper) == []
        wait_until("rec-1 gone from B", lambda: instances(b, keeper) == [])


def test_a_dead_owner_is_503_until_its_lease_ends_then_404(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with (
        recording_service() as (service_url, _),
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}) as b,
    ):
        reg = {"name": "rec", "id": "rec-1", "url": service_url, "check": {"type": "tcp"}}
        assert a.http.post(f"{API}/register", json=reg).status_code == 201
        wait_until("B pools A's instance", lambda: owned_by_a(b, "rec-1"))
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(timeout=10)
        started = time.monotonic()
        # A wrote its record at most a third of its lease (3 s) ago: it lasts a while yet
        r = b.http.put(f"{PATH}/rec-1/heartbeat")
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/unavailable")
        assert int(r.headers["retry-after"]) >= 1
        wait_until("A gone from /nodes", lambda: node_ids(b) == ["node-b"], timeout=15)
        assert time.monotonic() - started < 15
        for r in (b.http.put(f"{PATH}/rec-1/heartbeat"), b.http.delete(f"{PATH}/rec-1")):
            assert r.status_code == 404, r.text
        # the service registers again, through B: B owns it now
        assert b.http.post(f"{API}/register", json=reg).status_code == 201
        assert b.http.put(f"{PATH}/rec-1/heartbeat").status_code == 200
