"""HTTP services shared by the gateways of one Redis registry: an instance registered through
node A is called through node B (the proxy and B's task workers), follows A's deregistration
(asked of B, done by A), and leaves with A's lease when A dies."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshgate.testing.redis_server import RedisServer
from tests.gateway import fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_service_registered_on_one_node_is_called_through_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_REGISTRY": redis_server.url, "MESHGATE_REGISTRY_LEASE_S": "1"}
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    with (
        recording_service() as (service_url, seen),
        run_gateway(tmp_path / "a", {"fa": fault_server()}, env=env, node="a") as a,
        run_gateway(tmp_path / "b", {"fb": fault_server()}, env=env, node="b") as b,
    ):
        reg = {"name": "rec", "id": "rec-1", "url": service_url, "check": {"type": "tcp"}}
        assert a.http.post(f"{API}/register", json=reg).status_code == 201

        def state_on_b() -> str:
            r = b.get(f"{API}/services/rec")
            return str(r.json()["state"]) if r.status_code == 200 else "absent"

        until(lambda: state_on_b() == "healthy", "rec healthy on b")
        [inst] = b.get(f"{API}/services/rec").json()["instances"]
        assert inst["node"] == "a" and inst["remote"] and inst["id"] == "rec-1"

        # The proxy of b reaches it.
        r = b.http.get(f"{API}/call/rec/through-b")
        assert r.status_code == 200 and r.text == "ok"
        assert [s.path for s in seen if s.path == "/through-b"] == ["/through-b"]

        # So do b's task workers.
        target = {"service": "rec", "method": "POST", "path": "/task-on-b"}
        r = b.http.post(f"{API}/enqueue", json={"target": target})
        assert r.status_code == 202, r.text
        task = b.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 20}).json()
        assert task["status"] == "succeeded" and task["worker"] == "b", task
        assert any(s.path == "/task-on-b" for s in seen)
        health = b.get(f"{API}/health").json()["services"]["rec"]
        assert health["healthy"] == 1 and health["kind"] == "http"

        # Deregistered through b, by a, its owner (b relays it there); then b stops calling it.
        assert b.http.delete(f"{API}/services/rec/instances/rec-1").status_code == 204
        assert a.get(f"{API}/services/rec").status_code == 404
        until(lambda: state_on_b() == "absent", "rec gone from b")
        r = b.http.get(f"{API}/call/rec/after-deregistration")
        assert r.status_code == 404 and r.json()["type"].endswith("unknown-service"), r.text
        assert not any(s.path == "/after-deregistration" for s in seen)

        # Registered again, then a dies: the instance goes with a's lease.
        assert a.http.post(f"{API}/register", json=reg).status_code == 201
        until(lambda: state_on_b() == "healthy", "rec back on b")
        assert b.http.get(f"{API}/call/rec/again").status_code == 200
        a.process.stop(signal.SIGKILL)
        until(lambda: state_on_b() == "absent", "rec gone with a's lease")
        assert b.http.get(f"{API}/call/rec/after-a-died").status_code == 404
