"""The one call path: deadlines that belong to the caller, waits that are bounded, deadlines and
hop counts that travel to the next hop, and the interceptor chain on every entry."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import fault_server, run_gateway
from tests.integration.test_mesh_registry import agent, wait_service

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_callers_short_deadline_never_opens_the_breaker(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        for _ in range(8):  # more than the breaker's failure threshold (5)
            r = gw.call("fault", "sleep", {"seconds": 1}, timeout_s=0.06)
            assert r.status_code == 504, r.text
            assert "caller's deadline" in r.json()["detail"]
        (inst,) = gw.instances("fault")
        assert inst["breaker"] == "closed"
        assert gw.call("fault", "echo", {"text": "still here"}).status_code == 200

        r = gw.call("fault", "echo", {"text": "x"}, timeout_s=0.0005)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["minimum"] == 0.05 and "shorter than the minimum" in r.json()["detail"]


def test_an_instance_that_misses_its_own_deadline_does_open_the_breaker(tmp_path: Path) -> None:
    policy = "[servers.fault]\ncall_timeout_s = 0.3\n"
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        for _ in range(5):
            r = gw.call("fault", "sleep", {"seconds": 1})
            assert r.status_code == 504, r.text
        (inst,) = gw.instances("fault")
        assert inst["breaker"] == "open"
        r = gw.call("fault", "echo", {"text": "x"})
        assert r.status_code == 503 and r.json()["reason"] == "circuit_open"


def test_an_http_service_with_no_healthy_instance_answers_503_at_once(tmp_path: Path) -> None:
    policy = f"""
[[mesh.services]]
name = "down"
url = "http://127.0.0.1:{closed_port()}"
check = {{type = "tcp", interval_s = 2}}
"""
    with run_gateway(tmp_path, {}, policy) as gw:
        started = time.monotonic()
        r = gw.get(f"{API}/call/down/anything")
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["reason"] == "no_healthy_instance"
        assert r.headers["retry-after"] == "2"
        # The call's deadline is the default 30 s: a 503 well before it did not wait on it.
        assert elapsed < 10, elapsed


def test_a_call_waits_for_a_restarting_mcp_instance_only_within_restart_wait(
    tmp_path: Path,
) -> None:
    slow = fault_server("--startup-delay", "1.5")
    servers = {"patient": slow, "hasty": slow}
    policy = "[servers.hasty]\nrestart_wait_s = 0\n[servers.patient]\nrestart_wait_s = 20\n"
    with run_gateway(tmp_path, servers, policy) as gw:
        for name in ("patient", "hasty"):
            assert gw.call(name, "crash").status_code == 502
        r = gw.call("hasty", "echo", {"text": "x"})
        assert r.status_code == 503, r.text
        assert r.json()["reason"] == "no_healthy_instance"
        assert "restarting" in r.json()["detail"]
        r = gw.call("patient", "echo", {"text": "x"})
        assert r.status_code == 200, r.text


def test_deadline_and_hop_count_travel_to_the_next_hop(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {}) as gw, agent("svc", gw.url):
        wait_service(gw, "svc", lambda v: v["state"] == "healthy")
        seen = gw.get(f"{API}/call/svc/headers", headers={"X-Meshgate-Timeout": "7"}).json()
        assert 5 < float(seen["x-meshgate-timeout"]) <= 7
        assert seen["x-meshgate-hops"] == "1"
        seen = gw.get(f"{API}/call/svc/headers", headers={"X-Meshgate-Hops": "3"}).json()
        assert seen["x-meshgate-hops"] == "4"
        assert 25 < float(seen["x-meshgate-timeout"]) <= 30  # the service's own timeout
        for bad in ("many", "-1"):
            r = gw.get(f"{API}/call/svc/headers", headers={"X-Meshgate-Hops": bad})
            assert r.status_code == 422, r.text
        r = gw.get(f"{API}/call/svc/headers", headers={"X-Meshgate-Timeout": "soon"})
        assert r.status_code == 422 and "x-meshgate-timeout" in r.json()["detail"]


def test_two_gateways_registered_at_each_other_end_in_508(tmp_path: Path) -> None:
    # A service registered at the gateway itself is refused (test_registration_policy); two
    # gateways can still make a loop, and the hop limit ends it.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        run_gateway(tmp_path / "a", {}, node="a") as a,
        run_gateway(tmp_path / "b", {}, node="b") as b,
    ):
        for gw, other in ((a, b), (b, a)):
            r = gw.http.post(
                f"{API}/register",
                json={
                    "name": "loop",
                    "url": f"{other.url}{API}/call/loop",
                    "check": {"type": "tcp"},
                },
            )
            assert r.status_code == 201, r.text
        for gw in (a, b):
            wait_service(gw, "loop", lambda v: v["state"] == "healthy")
        r = a.get(f"{API}/call/loop/anything")
        assert r.status_code == 508, r.text
        body = r.json()
        assert body["type"].endswith("/loop-detected")
        assert body["hops"] == body["max_hops"] == 8
        # Every gateway on the way answered with the innermost one's 508: one call per hop,
        # shared between the two.
        total = 0.0
        for gw in (a, b):
            total += sum(
                float(line.split()[-1])
                for line in gw.get("/metrics").text.splitlines()
                if line.startswith("meshgate_call_duration_seconds_count")
                and 'service="loop"' in line
            )
        assert total == 8


def test_task_workers_pass_the_interceptor_chain(tmp_path: Path) -> None:
    policy = """
[[mesh.interceptors]]
type = "caller"
required = true
[[mesh.interceptors]]
type = "headers"
set = {"X-Env" = "test"}
[[mesh.interceptors]]
type = "trace"
"""
    me = {"X-Meshgate-Caller": "tester"}
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        with agent("svc", gw.url):
            wait_service(gw, "svc", lambda v: v["state"] == "healthy")
            http_task: dict[str, Any] = {
                "target": {"service": "svc", "method": "GET", "path": "/headers"}
            }
            r = gw.http.post(f"{API}/enqueue", json=http_task)
            assert r.status_code == 401, r.text  # refused when offered, not when run
            r = gw.http.post(f"{API}/enqueue", json=http_task, headers=me)
            assert r.status_code == 202, r.text
            task = gw.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 30}).json()
            assert task["status"] == "succeeded", task
            assert task["result"]["body"]["x-env"] == "test"  # the chain ran in the worker

            tool_task = {"target": {"server": "fault", "tool": "meta", "arguments": {}}}
            r = gw.http.post(f"{API}/enqueue", json=tool_task, headers=me)
            assert r.status_code == 202, r.text
            task = gw.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 30}).json()
            assert task["status"] == "succeeded", task
            meta = json.loads(task["result"]["content"][0]["text"])
            assert len(meta["traceparent"].split("-")) == 4
