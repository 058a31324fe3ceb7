"""The older `/api/v1/mesh/v2` API, as its clients send it: exactly their bodies, with httpx,
against a real gateway, real HTTP services on loopback and the fault MCP server. Every answer
is checked for the older keys and values; every bad input for a clear problem."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.testing.gateway import create_key as make_key
from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, Seen, fault_server, recording_service, run_gateway, serve_app
from tests.integration.test_auth_keys import bearer

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
PROBLEM = "application/problem+json"
TOPICS = """
[tasks.topics.echo]
server = "fault"
tool = "echo"

[tasks.topics.jobs]
service = "rec"
method = "POST"
path = "/jobs"
"""


@dataclass
class Mesh:
    gw: Gateway
    a: tuple[str, list[Seen]]  # two HTTP services on loopback: (URL, what each received)
    b: tuple[str, list[Seen]]
    rec: list[Seen]  # the static service the `jobs` topic posts to


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with (
        recording_service() as a,
        recording_service() as b,
        recording_service() as (rec_url, rec),
    ):
        static = f"""
[[mesh.services]]
name = "rec"
url = "{rec_url}"
check = {{ type = "tcp" }}
"""
        tmp = tmp_path_factory.mktemp("old_api")
        with run_gateway(tmp, {"fault": fault_server()}, TOPICS + static) as gw:
            yield Mesh(gw, a, b, rec)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    return body


def wait_healthy(http: httpx.Client, name: str, n: int, headers: Any = None) -> dict[str, Any]:
    end = time.monotonic() + 30
    while True:
        r = http.get(f"{API}/discover/{name}", headers=headers)
        if r.status_code == 200 and r.json()["healthy"] == n:
            body: dict[str, Any] = r.json()
            return body
        assert time.monotonic() < end, r.text
        time.sleep(0.05)


def register_two(http: httpx.Client, a_url: str, b_url: str, headers: Any = None) -> list[str]:
    """billing at a (weight 3, id derived) and at b (weight 1, id given): the older bodies."""
    r = http.post(
        f"{API}/register",
        json={
            "service_name": "billing",
            "address": "127.0.0.1",
            "port": port_of(a_url),
            "tags": ["v1", "eu"],
            "metadata": {"weight": 3, "team": "payments"},
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    first = r.json()
    assert set(first) == {"service_id", "status", "message"} and first["status"] == "registered"
    r = http.post(
        f"{API}/register",
        json={
            "service_name": "billing",
            "service_id": "billing-b",
            "address": "127.0.0.1",
            "port": port_of(b_url),
            "tags": ["v1"],
            "metadata": {"weight": 1},
            "protocol": "http",  # a field the older API ignored: ignored here too
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["service_id"] == "billing-b"
    return [first["service_id"], "billing-b"]


def old_call(http: httpx.Client, auth: Any = None, **over: Any) -> dict[str, Any]:
    body = {
        "service_name": "billing",
        "method": "GET",
        "path": "/invoices",
        "headers": {},
        "body": None,
        "timeout": 10,
        "retry_count": 1,
        **over,
    }
    r = http.post(f"{API}/call", json=body, headers=auth)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def picked(http: httpx.Client, n: int, auth: Any = None) -> list[str]:
    return [old_call(http, auth)["instance_id"] for _ in range(n)]


def test_an_old_client_registers_discovers_calls_balances_and_deregisters(mesh: Mesh) -> None:
    http = mesh.gw.http
    ids = register_two(http, mesh.a[0], mesh.b[0])
    found = wait_healthy(http, "billing", 2)
    assert {"service_name", "instances", "total", "healthy"} <= set(found)
    assert found["service_name"] == "billing" and found["total"] == 2
    by_id = {i["id"]: i for i in found["instances"]}
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]
    assert {"id", "address", "state", "tags", "metadata"} <= set(first)
    assert first["address"] == f"127.0.0.1:{port_of(mesh.a[0])}" and first["state"] == "healthy"
    assert first["tags"] == ["v1", "eu"] and first["metadata"]["team"] == "payments"

    listed = http.get(f"{API}/services").json()
    billing = [s for s in listed["services"] if s["name"] == "billing"]
    assert listed["count"] == len(listed["services"]) and len(billing) == 2
    assert {(s["address"], s["port"]) for s in billing} == {
        ("127.0.0.1", port_of(mesh.a[0])),
        ("127.0.0.1", port_of(mesh.b[0])),
    }
    assert any(item["name"] == "billing" for item in listed["items"])  # meshgate's keys too

    # A call through the router: the service really gets it, the answer comes back in a body.
    answer = old_call(
        http,
        method="POST",
        path="/orders?x=1",
        headers={"X-Order": "o-1"},
        body={"amount": 12},
    )
    assert set(answer) == {"status_code", "headers", "body", "instance_id", "trace_id", "duration"}
    assert answer["status_code"] == 200 and answer["body"] == "ok"
    assert answer["headers"]["content-type"] == "text/plain"
    assert answer["instance_id"] in ids and isinstance(answer["duration"], float)
    assert len(answer["trace_id"]) == 32
    seen = [s for s in mesh.a[1] + mesh.b[1] if s.path == "/orders?x=1"]
    assert len(seen) == 1 and seen[0].method == "POST" and seen[0].headers["x-order"] == "o-1"
    assert seen[0].headers["content-type"] == "application/json"

    # Balancing changed at run time: weighted (3:1), then round robin.
    r = http.post(f"{API}/configure/load-balancer", params={"strategy": "weighted"})
    assert r.status_code == 200 and r.json() == {"status": "configured", "strategy": "weighted"}
    assert Counter(picked(http, 8)) == {ids[0]: 6, ids[1]: 2}
    r = http.post(f"{API}/configure/load-balancer", params={"strategy": "round_robin"})
    assert r.json() == {"status": "configured", "strategy": "round_robin"}
    order = picked(http, 6)
    assert Counter(order) == {ids[0]: 3, ids[1]: 3}
    assert all(x != y for x, y in pairwise(order))

    r = http.post(
        f"{API}/configure/circuit-breaker",
        params={"failure_threshold": 3, "recovery_timeout": 20},
    )
    assert r.status_code == 200
    assert r.json() == {"status": "configured", "failure_threshold": 3, "recovery_timeout": 20}

    health = http.get(f"{API}/health").json()
    assert health["status"] == "healthy" and health["health_score"] == 1.0
    assert health["total_services"] == 3  # fault, rec, billing
    assert health["total_instances"] == health["healthy_instances"] == 4
    assert health["open_circuit_breakers"] == 0
    assert health["runtime_policy"] == {
        "strategy": "round_robin",
        "failure_threshold": 3,
        "recovery_timeout": 20,
    }
    topology = http.get(f"{API}/topology").json()
    assert topology["services"]["billing"]["instances"] == 2
    assert topology["total_instances"] == topology["healthy_instances"] == 4
    assert topology["circuit_breakers"][ids[1]] == "closed"

    r = http.delete(f"{API}/deregister/billing-b")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"status", "message"} and r.json()["status"] == "deregistered"
    assert http.get(f"{API}/discover/billing").json()["total"] == 1
    assert "billing-b" in problem(http.delete(f"{API}/deregister/billing-b"), 404)["detail"]
    assert http.delete(f"{API}/deregister/{ids[0]}").status_code == 200
    problem(http.get(f"{API}/discover/billing"), 404)


def test_old_enqueue_runs_a_mapped_topic_and_its_results_are_listed(mesh: Mesh) -> None:
    http = mesh.gw.http
    ids = []
    for text in ("first", "second"):
        r = http.post(f"{API}/enqueue", json={"topic": "echo", "task": {"text": text}})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"id", "message"}
        ids.append(r.json()["id"])
        task = http.get(f"{API}/task/{ids[-1]}", params={"wait_s": 30}).json()
        assert task["status"] == "succeeded", task
        assert text in json.dumps(task["result"])  # the fault server's echo ran
    results = http.get(f"{API}/results", params={"topic": "echo", "count": 5}).json()
    assert [x["id"] for x in results] == ids[::-1]  # newest first
    assert "second" in json.dumps(results[0]["data"]) and {"id", "data"} <= set(results[0])
    latest = http.get(f"{API}/results", params={"topic": "echo", "count": 1}).json()
    assert [x["id"] for x in latest] == [ids[1]]

    # The scripts' form, to an HTTP service: the service really receives the task.
    r = http.post(
        f"{API}/enqueue",
        json={"task_type": "jobs", "payload": {"invoice": 7}, "priority": "high"},
    )
    assert r.status_code == 200 and set(r.json()) == {"task_id"}, r.text
    task_id = r.json()["task_id"]
    task = http.get(f"{API}/task/{task_id}", params={"wait_s": 30}).json()
    assert task["status"] == "succeeded" and task["priority"] == 100, task
    assert [str(s) for s in mesh.rec if s.path == "/jobs"] == ["POST /jobs"]
    [job] = http.get(f"{API}/results", params={"topic": "jobs"}).json()
    assert job["id"] == task_id and job["data"]["status"] == 200

    # meshgate's own enqueue is untouched on the same path.
    native = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "n"}}}
    r = http.post(f"{API}/enqueue", json=native)
    assert r.status_code == 202 and set(r.json()) == {"task_id", "created"}


def test_an_unknown_topic_is_refused_naming_the_known_ones(mesh: Mesh) -> None:
    http = mesh.gw.http
    for body in ({"topic": "nope", "task": {}}, {"task_type": "nope", "payload": {}}):
        err = problem(http.post(f"{API}/enqueue", json=body), 422)
        assert err["known_topics"] == ["echo", "jobs"]
        assert "echo, jobs" in err["detail"] and "'nope'" in err["detail"]
    err = problem(http.get(f"{API}/results", params={"topic": "nope"}), 422)
    assert err["known_topics"] == ["echo", "jobs"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/register", {"service_name": "x", "address": "127.0.0.1"}, ["port"]),
        ("/register", {"service_name": "x", "address": "127.0.0.1", "port": 70000}, ["port"]),
        ("/register", {"service_name": "x", "address": "http://h", "port": 80}, ["address"]),
        ("/register", {"service_name": "x y", "address": "127.0.0.1", "port": 80}, None),
        (
            "/register",
            {"service_name": "x", "address": "127.0.0.1", "port": 80, "metadata": {"weight": 0}},
            ["metadata", "weight"],
        ),
        ("/enqueue", {"topic": "echo"}, ["task"]),
        ("/enqueue", {"topic": "echo", "task": "text"}, ["task"]),
        ("/enqueue", {"task_type": "jobs", "priority": "urgent"}, None),
        ("/call", {"method": "GET"}, ["service_name"]),
        ("/call", {"service_name": "rec", "method": "FETCH"}, ["method"]),
        ("/call", {"service_name": "rec", "path": "no-slash"}, ["path"]),
        ("/call", {"service_name": "rec", "timeout": 0}, ["timeout"]),
    ],
)
def test_bad_old_bodies_get_a_422_naming_the_field(
    mesh: Mesh, path: str, body: dict[str, Any], field: list[str] | None
) -> None:
    err = problem(mesh.gw.http.post(API + path, json=body), 422)
    if field is not None:
        assert field in [e["loc"] for e in err["errors"]], err


def test_bad_old_requests_get_clear_problems(mesh: Mesh) -> None:
    http = mesh.gw.http
    # Where a registration may point: the same policy as meshgate's own bodies.
    for address in ("169.254.169.254", "fe80::1"):
        body = {"service_name": "meta", "address": address, "port": 80}
        err = problem(http.post(f"{API}/register", json=body), 422)
        assert err["type"].endswith("/registration-refused"), err
    own = {"service_name": "me", "address": "127.0.0.1", "port": port_of(mesh.gw.url)}
    assert problem(http.post(f"{API}/register", json=own), 422)["type"].endswith(
        "/registration-refused"
    )
    err = problem(http.post(f"{API}/configure/load-balancer", params={"strategy": "fastest"}), 422)
    assert "round_robin" in err["detail"]
    problem(http.post(f"{API}/configure/load-balancer"), 422)
    for params in ({"failure_threshold": 0}, {"recovery_timeout": 99999}):
        problem(http.post(f"{API}/configure/circuit-breaker", params=params), 422)
    assert (
        "count"
        in problem(http.get(f"{API}/results", params={"topic": "echo", "count": 0}), 422)["detail"]
    )
    assert problem(http.post(f"{API}/call", json={"service_name": "ghost"}), 404)
    err = problem(http.post(f"{API}/call", json={"service_name": "rec", "path": "/a/../b"}), 400)
    assert "'..'" in err["detail"]
    problem(http.get(f"{API}/discover/ghost"), 404)
    problem(http.delete(f"{API}/deregister/ghost"), 404)


POLICY = """
[auth]

[roles.reader]
allow = ["mesh:discover", "mesh:register", "http:billing"]
"""


def test_configure_needs_admin_and_a_restart_keeps_it(tmp_path: Path) -> None:
    with recording_service() as a, recording_service() as b:
        data = tmp_path / "data"
        with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as gw:
            admin = bearer(make_key(data, "ops", "--role", "admin"))
            reader = bearer(make_key(data, "reader-bot", "--role", "reader"))
            ids = register_two(gw.http, a[0], b[0], headers=reader)
            wait_healthy(gw.http, "billing", 2, headers=reader)
            lb = f"{API}/configure/load-balancer"
            assert gw.http.post(lb, params={"strategy": "weighted"}).status_code == 401
            err = problem(gw.http.post(lb, params={"strategy": "weighted"}, headers=reader), 403)
            assert err["principal"] == "reader-bot"
            breaker = f"{API}/configure/circuit-breaker"
            problem(gw.http.post(breaker, headers=reader), 403)
            # Refused changes changed nothing: the default strategy still takes turns.
            assert Counter(picked(gw.http, 8, reader)) == {ids[0]: 4, ids[1]: 4}
            r = gw.http.post(lb, params={"strategy": "weighted"}, headers=admin)
            assert r.status_code == 200, r.text
            assert Counter(picked(gw.http, 8, reader)) == {ids[0]: 6, ids[1]: 2}
            params = {"failure_threshold": 2, "recovery_timeout": 15}
            assert gw.http.post(breaker, params=params, headers=admin).status_code == 200
        with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as gw:
            wait_healthy(gw.http, "billing", 2, headers=reader)
            health = gw.http.get(f"{API}/health", headers=admin).json()
            assert health["runtime_policy"] == {
                "strategy": "weighted",
                "failure_threshold": 2,
                "recovery_timeout": 15,
            }
            server = gw.http.get("/api/v1/mcp/servers/fault", headers=admin).json()
            assert server["strategy"] == "weighted"
            assert Counter(picked(gw.http, 8, reader)) == {ids[0]: 6, ids[1]: 2}


def test_nodes_of_a_shared_registry_keep_and_follow_the_run_time_policy(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_REGISTRY": redis_server.url}
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    lb = f"{API}/configure/load-balancer"
    with run_gateway(tmp_path / "a", {"f": fault_server()}, env=env, node="a") as a:
        assert a.http.post(lb, params={"strategy": "weighted"}).status_code == 200
        # A node that starts later reads what was set before it.
        with run_gateway(tmp_path / "b", {"f": fault_server()}, env=env, node="b") as b:
            assert b.get(f"{API}/health").json()["runtime_policy"] == {"strategy": "weighted"}
            assert b.server("f")["strategy"] == "weighted"
            # A change on one node reaches the others while they run.
            r = a.http.post(f"{API}/configure/circuit-breaker", params={"failure_threshold": 7})
            assert r.status_code == 200
            assert a.http.post(lb, params={"strategy": "round_robin"}).status_code == 200
            end = time.monotonic() + 20
            want = {"strategy": "round_robin", "failure_threshold": 7, "recovery_timeout": 60}
            while b.get(f"{API}/health").json()["runtime_policy"] != want:
                assert time.monotonic() < end, b.get(f"{API}/health").json()["runtime_policy"]
                time.sleep(0.05)
            assert b.server("f")["strategy"] == "round_robin"


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An HTTP service whose /health passes and whose every other path answers 503."""
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/health" else 503
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_breaker_setting_applies_to_running_instances(tmp_path: Path) -> None:
    with serve_app(failing_app) as url, run_gateway(tmp_path, {"f": fault_server()}) as gw:
        http = gw.http
        body = {"service_name": "flaky", "service_id": "flaky-1", "address": "127.0.0.1"}
        assert http.post(f"{API}/register", json={**body, "port": port_of(url)}).status_code == 200
        wait_healthy(http, "flaky", 1)
        params = {"failure_threshold": 2, "recovery_timeout": 300}
        assert http.post(f"{API}/configure/circuit-breaker", params=params).status_code == 200
        # POST is never sent twice: one failure per call; the second opens the breaker.
        for _ in range(2):
            answer = old_call(http, service_name="flaky", method="POST", path="/charge")
            assert answer["status_code"] == 503 and answer["instance_id"] == "flaky-1"
        err = problem(http.post(f"{API}/call", json={"service_name": "flaky"}), 503)
        assert "open circuit breaker" in err["detail"]
        health = http.get(f"{API}/health").json()
        assert health["open_circuit_breakers"] == 1 and health["status"] == "degraded"
        assert http.get(f"{API}/topology").json()["circuit_breakers"]["flaky-1"] == "open"


async def no_health_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A service of the older mesh: it serves `/orders` and nothing else, no health path."""
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/orders" else 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def instance_state(http: httpx.Client, service: str, instance_id: str) -> str:
    found = http.get(f"{API}/discover/{service}").json()
    state: str = {i["id"]: i for i in found["instances"]}[instance_id]["state"]
    return state


def test_an_old_registration_is_checked_by_tcp_unless_it_names_a_health_path(
    tmp_path: Path,
) -> None:
    with serve_app(no_health_app) as url, run_gateway(tmp_path, {"f": fault_server()}) as gw:
        http = gw.http
        body = {"service_name": "orders", "address": "127.0.0.1", "port": port_of(url)}
        # No health path: a TCP connect checks it, so a service without /health is healthy.
        plain = {**body, "service_id": "orders-1"}
        assert http.post(f"{API}/register", json=plain).status_code == 200
        wait_healthy(http, "orders", 1)
        assert old_call(http, service_name="orders", path="/orders")["status_code"] == 200
        # A health path named: GET it, and a 404 there keeps the instance out.
        checked = {**body, "service_id": "orders-2", "metadata": {"health_check_path": "/ready"}}
        assert http.post(f"{API}/register", json=checked).status_code == 200
        end = time.monotonic() + 30
        while (state := instance_state(http, "orders", "orders-2")) != "unhealthy":
            assert state == "starting" and time.monotonic() < end, state
            time.sleep(0.05)
        assert http.get(f"{API}/discover/orders").json()["healthy"] == 1
        bad = {**body, "metadata": {"health_check_path": "ready"}}
        err = problem(http.post(f"{API}/register", json=bad), 422)
        assert err["errors"][0]["loc"] == ["metadata", "health_check_path"]
