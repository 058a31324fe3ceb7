"""HTTP services in the mesh: registration, executed health checks, TTLs, persistence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import REPO, Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
AGENT = REPO / "examples" / "agents" / "agent.py"


@contextmanager
def agent(name: str, mesh: str, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The example agent: a real HTTP service that registers itself with the gateway."""
    proc = subprocess.Popen(
        [sys.executable, str(AGENT), name, "--mesh", mesh, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "registered as" in line, line + (proc.stderr.read() if proc.stderr else "")
        port = line.split("port ")[1].split(",")[0]
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def wait_service(gw: Gateway, name: str, predicate: Any, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        r = gw.get(f"{API}/services/{name}")
        if r.status_code == 200 and predicate(r.json()):
            body: dict[str, Any] = r.json()
            return body
        assert time.monotonic() < end, f"timed out on {name}: {r.status_code} {r.text}"
        time.sleep(0.05)


def test_a_registered_agent_is_checked_for_real_and_deregisters(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        with agent("planner", gw.url) as (_, url):
            view = wait_service(gw, "planner", lambda v: v["state"] == "healthy")
            [inst] = view["instances"]
            assert inst["url"] == url and inst["kind"] == "http"
            assert inst["last_check"]["ok"] and "agent" in inst["tags"]
            # It fails its checks: unhealthy after the threshold, with the reason.
            httpx.post(f"{url}/sick")
            view = wait_service(gw, "planner", lambda v: v["state"] == "unhealthy")
            assert "HTTP 503" in view["instances"][0]["last_check"]["error"]
            listed = gw.get(f"{API}/services", params={"kind": "http"}).json()["items"]
            assert [s["name"] for s in listed] == ["planner"]
            health = gw.get(f"{API}/health").json()
            assert health["services"]["planner"]["kind"] == "http"
        # SIGTERM: the agent deregistered itself.
        assert gw.get(f"{API}/services/planner").status_code == 404


def test_registration_is_idempotent_and_validated(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            body = {"name": "db", "address": "127.0.0.1", "port": port, "check": {"type": "tcp"}}
            first = gw.http.post(f"{API}/register", json=body)
            assert first.status_code == 201, first.text
            again = gw.http.post(f"{API}/register", json=body)
            assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
            wait_service(gw, "db", lambda v: v["state"] == "healthy")  # TCP connect passes

        bad: list[tuple[dict[str, Any], str]] = [
            ({"name": "x"}, "url, or address and port"),
            ({"name": "x", "url": "ftp://h/"}, "http://"),
            ({"name": "bad name", "url": "http://h"}, "name"),
            ({"name": "x", "url": "http://h", "weight": 0}, "weight"),
            ({"name": "x", "url": "http://h", "surprise": 1}, "surprise"),
            ({"name": "x", "url": "http://h", "check": {"path": "health"}}, "path"),
            ({"name": "fault", "url": "http://h"}, "MCP server"),
        ]
        for body, needle in bad:
            r = gw.http.post(f"{API}/register", json=body)
            assert r.status_code == 422, (body, r.text)
            assert needle in r.text, (needle, r.text)
        r = gw.http.post(
            f"{API}/register", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        r = gw.http.post(
            f"{API}/register",
            json={"name": "x", "url": "http://h", "metadata": {"a": "x" * 2_000_000}},
        )
        assert r.status_code == 413
        assert gw.http.delete(f"{API}/services/db/instances/nope").status_code == 404
        assert gw.http.put(f"{API}/services/db/instances/nope/heartbeat").status_code == 404
        # nothing of the bad requests was registered
        names = [s["name"] for s in gw.get(f"{API}/services").json()["items"]]
        assert names == ["db", "fault"]


def test_a_missed_ttl_removes_the_instance(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        ids = {}
        for name in ("kept", "silent"):
            body = {
                "name": name,
                "url": "http://127.0.0.1:9",
                "ttl_s": 2.0,
                "check": {"type": "tcp", "interval_s": 60},
            }
            r = gw.http.post(f"{API}/register", json=body)
            assert r.status_code == 201
            ids[name] = r.json()["id"]

        def heartbeat(name: str) -> int:
            return gw.http.put(f"{API}/services/{name}/instances/{ids[name]}/heartbeat").status_code

        # "kept" is heartbeated while "silent" is not: once "silent" is gone, a TTL has passed
        # since both registered, and "kept" must have outlived it.
        deadline = time.monotonic() + 30
        while gw.get(f"{API}/services/silent").status_code == 200:
            assert heartbeat("kept") == 200
            assert time.monotonic() < deadline, "an instance outlived its TTL"
            time.sleep(0.05)
        assert heartbeat("kept") == 200
        assert gw.get(f"{API}/services/kept").status_code == 200
        assert heartbeat("silent") == 404
        # Now "kept" falls silent too.
        wait_service_gone(gw, "kept")
        assert heartbeat("kept") == 404


def wait_service_gone(gw: Gateway, name: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while gw.get(f"{API}/services/{name}").status_code != 404:
        assert time.monotonic() < end, f"{name} was never removed"
        time.sleep(0.05)


def test_registrations_survive_a_gateway_kill(tmp_path: Path) -> None:
    data = tmp_path / "state"
    env = {"MESHGATE_DATA_DIR": str(data)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        body = {"name": "kept", "address": "127.0.0.1", "port": port, "check": {"type": "tcp"}}
        with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
            assert gw.http.post(f"{API}/register", json=body).status_code == 201
            gw.process.stop(signal.SIGKILL)
        with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
            view = wait_service(gw, "kept", lambda v: v["state"] == "healthy")
            assert view["instances"][0]["url"] == f"http://127.0.0.1:{port}"
            items = gw.get(f"{API}/services", params={"limit": 1}).json()
            assert len(items["items"]) == 1 and items["next_cursor"]
            rest = gw.get(f"{API}/services", params={"limit": 1, "cursor": items["next_cursor"]})
            assert [s["name"] for s in rest.json()["items"]] == ["kept"]
            bad = gw.get(f"{API}/services", params={"cursor": "%%%"})
            assert bad.status_code == 422
            assert json.loads(gw.get(f"{API}/health").text)["registry"]["registrations"] == 1


def test_calls_through_the_router_spread_survive_a_kill_and_fail_clearly(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        with agent("planner", gw.url) as (a, _), agent("planner", gw.url) as (b, _):
            wait_service(
                gw,
                "planner",
                lambda v: (
                    len(v["instances"]) == 2
                    and all(i["state"] == "healthy" for i in v["instances"])
                ),
            )
            call = f"{API}/call/planner"
            pids = {gw.get(f"{call}/whoami").json()["pid"] for _ in range(10)}
            assert pids == {a.pid, b.pid}  # balanced over both
            r = gw.http.post(f"{call}/echo?x=1", content=b"payload", headers={"x-trace": "t1"})
            assert r.status_code == 200 and r.json()["echo"] == "payload"
            assert gw.get(f"{call}/nope").status_code == 404  # the service's own 404

            # A slow answer past the deadline: 504. Not HTTP at all: 502.
            r = gw.get(f"{call}/sleep?seconds=3", headers={"x-meshgate-timeout": "0.5"})
            assert r.status_code == 504 and r.json()["type"].endswith("upstream-timeout")
            r = gw.get(f"{call}/garbage")
            assert r.status_code == 502, r.text
            assert gw.get(f"{call}/whoami", headers={"x-meshgate-timeout": "x"}).status_code == 422

            # kill -9 one: GETs go on (retried on the other), and it is marked unhealthy.
            a.kill()
            a.wait(10)
            for _ in range(20):
                r = gw.get(f"{call}/whoami")
                assert r.status_code == 200 and r.json()["pid"] == b.pid
            dead = wait_service(
                gw,
                "planner",
                lambda v: any(i["state"] == "unhealthy" for i in v["instances"]),
            )
            assert "cannot connect" in json.dumps(dead["instances"])
        r = gw.get(f"{API}/call/nobody/x")
        assert r.status_code == 404 and "nobody" in r.json()["detail"]


def test_topology_shows_declared_and_observed_edges_and_degraded_services(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        with agent("writer", gw.url, "--depends-on", "researcher"):
            wait_service(gw, "writer", lambda v: v["state"] == "healthy")
            topo = gw.get(f"{API}/topology").json()
            writer = topo["services"]["writer"]
            assert writer["status"] == "degraded" and writer["depends_on"] == ["researcher"]
            with agent("researcher", gw.url):
                wait_service(gw, "researcher", lambda v: v["state"] == "healthy")
                me = {"X-Meshgate-Caller": "writer"}
                assert gw.get(f"{API}/call/researcher/whoami", headers=me).status_code == 200
                assert (
                    gw.call(
                        "fault",
                        "echo",
                        {"text": "x"},
                    ).status_code
                    == 200
                )  # no caller
                r = gw.http.post(
                    "/api/v1/mcp/servers/fault/tools/echo",
                    json={"arguments": {"text": "x"}},
                    headers=me,
                )
                assert r.status_code == 200
                topo = gw.get(f"{API}/topology").json()
                status = {name: s["status"] for name, s in topo["services"].items()}
                assert status == {"fault": "healthy", "researcher": "healthy", "writer": "healthy"}
                edges = {(e["from"], e["to"], e["kind"]) for e in topo["edges"]}
                assert edges == {
                    ("writer", "researcher", "declared"),
                    ("writer", "researcher", "observed"),
                    ("writer", "fault", "observed"),
                }
                mermaid = gw.get(f"{API}/topology", params={"format": "mermaid"}).text
                assert mermaid.startswith("flowchart LR") and "writer (healthy)" in mermaid
                assert "-.->" in mermaid and "-->" in mermaid
                dot = gw.get(f"{API}/topology", params={"format": "dot"}).text
                assert '"writer" -> "researcher" [style=dashed]' in dot
                assert gw.get(f"{API}/topology", params={"format": "png"}).status_code == 422


def test_interceptors_run_in_order_on_proxy_and_tool_calls(tmp_path: Path) -> None:
    policy = """
[[mesh.interceptors]]
type = "caller"
required = true
[[mesh.interceptors]]
type = "headers"
set = {"X-Env" = "test"}
[[mesh.interceptors]]
type = "trace"
[[mesh.interceptors]]
type = "size_limit"
max_request_bytes = 100
"""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        with agent("svc", gw.url):
            wait_service(gw, "svc", lambda v: v["state"] == "healthy")
            me = {"X-Meshgate-Caller": "tester"}
            seen = gw.get(f"{API}/call/svc/headers", headers=me).json()
            assert seen["x-env"] == "test" and seen["x-meshgate-caller"] == "tester"
            assert len(seen["traceparent"].split("-")) == 4  # a new trace
            seen = gw.get(f"{API}/call/svc/headers", headers={**me, "traceparent": parent}).json()
            assert seen["traceparent"].split("-")[1] == parent.split("-")[1]  # its trace goes on
            r = gw.get(f"{API}/call/svc/headers")
            assert r.status_code == 401 and "x-meshgate-caller" in r.json()["detail"]
            r = gw.http.post(f"{API}/call/svc/echo", content=b"x" * 200, headers=me)
            assert r.status_code == 413

            r = gw.http.post(
                "/api/v1/mcp/servers/fault/tools/meta",
                json={"arguments": {}},
                headers={**me, "traceparent": parent},
            )
            assert r.status_code == 200, r.text
            sent = json.loads(r.json()["content"][0]["text"])["traceparent"]
            assert sent.split("-")[1] == parent.split("-")[1]  # in the client's trace
            assert gw.call("fault", "echo", {"text": "x"}).status_code == 401  # no caller

            envelope = {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
            params: dict[str, Any] = {"name": "meta", "arguments": {}, "_meta": envelope}
            msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
            mcp_headers = {
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": "tools/call",
                "Mcp-Name": "meta",
                "traceparent": parent,
            }
            r = gw.http.post("/mcp/fault", json=msg, headers={**mcp_headers, **me})
            meta = json.loads(r.json()["result"]["content"][0]["text"])
            assert meta["traceparent"].split("-")[1] == parent.split("-")[1]
            r = gw.http.post("/mcp/fault", json=msg, headers=mcp_headers)  # no caller
            assert r.json()["error"]["data"]["status"] == 401
            big = {**msg, "params": {**params, "arguments": {"text": "x" * 200}}}
            r = gw.http.post("/mcp/fault", json=big, headers={**mcp_headers, **me})
            assert r.json()["error"]["data"]["status"] == 413


def test_the_sample_fleet_registers_is_balanced_and_routes_around_a_kill(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        fleet = subprocess.Popen(
            [sys.executable, str(AGENT.with_name("fleet.py")), "--mesh", gw.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert fleet.stdout is not None
            lines = [fleet.stdout.readline() for _ in range(9)]
            assert lines[-1].startswith("8 agents up"), lines
            names = ["planner", "researcher", "writer", "critic", "coder", "tester", "summarizer"]
            for name in names:
                wait_service(
                    gw, name, lambda v: all(i["state"] == "healthy" for i in v["instances"])
                )
            wait_service(gw, "researcher", lambda v: len(v["instances"]) == 2)
            pids = {gw.get(f"{API}/call/researcher/whoami").json()["pid"] for _ in range(10)}
            assert len(pids) == 2  # balanced
            topo = gw.get(f"{API}/topology").json()
            declared = {(e["from"], e["to"]) for e in topo["edges"] if e["kind"] == "declared"}
            assert ("summarizer", "critic") in declared and len(declared) == 6
            # one researcher killed mid-load: GETs keep working on the other
            victim = pids.pop()
            os.kill(victim, signal.SIGKILL)
            for _ in range(30):
                r = gw.get(f"{API}/call/researcher/whoami")
                assert r.status_code == 200 and r.json()["pid"] != victim
        finally:
            fleet.send_signal(signal.SIGTERM)
            fleet.wait(30)
        # every agent deregistered on its way out (the killed one waits for its TTL)
        deadline = time.monotonic() + 30
        while gw.get(f"{API}/services", params={"kind": "http"}).json()["items"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_static_services_from_the_policy_file(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        policy = f"""
[[mesh.services]]
name = "ledger"
address = "127.0.0.1"
port = {port}
tags = ["static"]
check = {{type = "tcp", interval_s = 0.2}}
"""
        with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
            view = wait_service(gw, "ledger", lambda v: v["state"] == "healthy")
            [inst] = view["instances"]
            assert inst["static"] and inst["tags"] == ["static"]
            r = gw.http.delete(f"{API}/services/ledger/instances/{inst['id']}")
            assert r.status_code == 422 and "meshgate.toml" in r.text
            health = gw.get(f"{API}/health").json()
            assert health["registry"]["transitions"]["starting->healthy"] >= 1


def test_per_service_policy_from_the_policy_file(tmp_path: Path) -> None:
    policy = "[services.slowpoke]\ncall_timeout_s = 0.5\n"
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        with agent("slowpoke", gw.url), agent("other", gw.url):
            for name in ("slowpoke", "other"):
                wait_service(gw, name, lambda v: v["state"] == "healthy")
            r = gw.get(f"{API}/call/slowpoke/sleep?seconds=1.5")
            assert r.status_code == 504  # its own deadline
            r = gw.get(f"{API}/call/other/sleep?seconds=1.5")
            assert r.status_code == 200  # the default deadline (30 s)


def test_an_mcp_health_check_speaks_mcp(tmp_path: Path) -> None:
    # The MCP service is another gateway's endpoint (one at the gateway itself is refused).
    (tmp_path / "mcp").mkdir()
    (tmp_path / "gw").mkdir()
    with (
        run_gateway(tmp_path / "mcp", {"fault": fault_server()}, node="mcp") as server,
        run_gateway(tmp_path / "gw", {}) as gw,
    ):
        fast = {"interval_s": 0.2, "unhealthy_after": 2}
        good = {
            "name": "tools",
            "url": server.url,
            "check": {"type": "mcp", "path": "/mcp/fault", **fast},
        }
        bad = {
            "name": "ghost",
            "url": server.url,
            "check": {"type": "mcp", "path": "/mcp/none", **fast},
        }
        assert gw.http.post(f"{API}/register", json=good).status_code == 201
        assert gw.http.post(f"{API}/register", json=bad).status_code == 201
        view = wait_service(gw, "tools", lambda v: v["state"] == "healthy")
        assert view["instances"][0]["last_check"]["ok"]
        view = wait_service(gw, "ghost", lambda v: v["state"] == "unhealthy")
        assert "MCP check failed" in view["instances"][0]["last_check"]["error"]


def test_request_bodies_stream_through_and_are_bounded(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        with agent("sink", gw.url):
            wait_service(gw, "sink", lambda v: v["state"] == "healthy")
            payload = b"chunk-" * 50_000  # 300 kB, sent with its length, streamed on
            r = gw.http.post(f"{API}/call/sink/echo", content=payload)
            assert r.status_code == 200 and len(r.json()["echo"]) == len(payload)

            def chunks() -> Iterator[bytes]:
                for _ in range(20):
                    yield b"x" * 100_000  # 2 MB, no declared length: cut at max_body_bytes

            r = gw.http.post(f"{API}/call/sink/echo", content=chunks())
            assert r.status_code == 413, r.text

            def small() -> Iterator[bytes]:
                yield from (b"ab", b"cd", b"ef")

            r = gw.http.post(f"{API}/call/sink/echo", content=small())  # chunked, within bounds
            assert r.status_code == 200 and r.json()["echo"] == "abcdef"
            assert gw.get(f"{API}/call/sink/whoami").status_code == 200  # still fine
