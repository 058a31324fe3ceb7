"""Cross-site requests and DNS rebinding: a web page must not drive the gateway on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.gateway import Gateway, fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
WRITE = "/api/v1/mcp/servers/fault/tools/write"
EVIL = {"origin": "http://evil.example"}
TEXT = {"content-type": "text/plain;charset=UTF-8"}
PROBLEM = "application/problem+json"


def refused(r: httpx.Response, status: int, slug: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["type"].endswith("/" + slug), body


def written(gw: Gateway) -> int:
    """Writes so far: the fault server's `write` counter, read by one more write."""
    r = gw.call("fault", "write")
    assert r.status_code == 200, r.text
    return int(r.json()["content"][0]["text"]) - 1


def wait_healthy(gw: Gateway, name: str) -> None:
    deadline = time.monotonic() + 30
    while gw.get(f"{API}/services/{name}").json().get("state") != "healthy":
        assert time.monotonic() < deadline, f"{name} never became healthy"
        time.sleep(0.05)


def test_a_web_page_cannot_call_tools(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        # The attack: a "simple" cross-site POST, no preflight, straight to a writing tool.
        body = b'{"arguments": {}}'
        refused(
            gw.http.post(WRITE, content=body, headers={**EVIL, **TEXT}), 403, "origin-not-allowed"
        )
        # The Origin alone refuses it, whatever the content type.
        refused(
            gw.http.post(WRITE, json={"arguments": {}}, headers=EVIL), 403, "origin-not-allowed"
        )
        # A body that is not declared JSON is refused even without an Origin.
        refused(gw.http.post(WRITE, content=body, headers=TEXT), 415, "unsupported-media-type")
        refused(gw.http.post(WRITE, content=body), 415, "unsupported-media-type")
        assert written(gw) == 0
        # A page on loopback, and a client that sends no Origin, are served.
        local = {"origin": "http://localhost:5173"}
        assert gw.http.post(WRITE, json={"arguments": {}}, headers=local).status_code == 200
        assert (
            gw.http.post(
                WRITE, content=body, headers={"content-type": "application/json; charset=utf-8"}
            ).status_code
            == 200
        )
        assert written(gw) == 3
        # /mcp applies the same Origin rule (answered in JSON-RPC).
        init = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"accept": "application/json, text/event-stream"}
        r = gw.http.post("/mcp", json=init, headers={**EVIL, **accept})
        assert r.status_code == 403 and "allowed_origins" in r.json()["error"]["message"]


def test_registry_and_queue_writes_are_guarded(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw, recording_service() as (url, seen):
        reg = {"name": "web", "url": url, "id": "w1"}
        refused(gw.http.post(f"{API}/register", json=reg, headers=EVIL), 403, "origin-not-allowed")
        raw = b'{"name": "web", "url": "' + url.encode() + b'"}'
        refused(
            gw.http.post(f"{API}/register", content=raw, headers=TEXT),
            415,
            "unsupported-media-type",
        )
        assert gw.get(f"{API}/services/web").status_code == 404
        assert gw.http.post(f"{API}/register", json=reg).status_code == 201
        wait_healthy(gw, "web")

        instance = f"{API}/services/web/instances/w1"
        refused(gw.http.put(f"{instance}/heartbeat", headers=EVIL), 403, "origin-not-allowed")
        assert gw.http.put(f"{instance}/heartbeat").status_code == 200  # no body: no type needed

        # The proxy passes any content type through, but not for a page on another site.
        before = len(seen)
        r = gw.http.post(f"{API}/call/web/x", content=b"hi", headers={**EVIL, **TEXT})
        refused(r, 403, "origin-not-allowed")
        assert len(seen) == before
        r = gw.http.post(f"{API}/call/web/x", content=b"hi", headers=TEXT)
        assert r.status_code == 200 and r.text == "ok" and str(seen[-1]) == "POST /x"

        target = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "t"}}}
        refused(
            gw.http.post(f"{API}/enqueue", json=target, headers=EVIL), 403, "origin-not-allowed"
        )
        refused(
            gw.http.post(f"{API}/enqueue", content=b"{}", headers=TEXT),
            415,
            "unsupported-media-type",
        )
        assert gw.get(f"{API}/tasks").json()["items"] == []
        r = gw.http.post(f"{API}/enqueue", json=target)
        assert r.status_code == 202, r.text
        task = r.json()["task_id"]
        deadline = time.monotonic() + 30
        while gw.get(f"{API}/task/{task}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused(gw.http.delete(f"{API}/task/{task}", headers=EVIL), 403, "origin-not-allowed")
        refused(gw.http.post(f"{API}/task/{task}/retry", headers=EVIL), 403, "origin-not-allowed")
        # Without an Origin they reach the queue, which answers for itself.
        assert gw.http.post(f"{API}/task/{task}/retry").status_code == 422
        assert gw.http.delete(f"{API}/task/{task}").json()["was"] == "succeeded"

        refused(gw.http.delete(instance, headers=EVIL), 403, "origin-not-allowed")
        assert gw.get(f"{API}/services/web").status_code == 200
        assert gw.http.delete(instance).status_code in (200, 204)
        assert gw.get(f"{API}/services/web").status_code == 404


def test_a_rebound_host_is_refused_everywhere(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        port = httpx.URL(gw.url).port
        evil = {"host": "evil.example"}
        refused(gw.get("/api/v1/mcp/servers", headers=evil), 421, "host-not-allowed")
        refused(
            gw.get("/metrics", headers={"host": f"evil.example:{port}"}), 421, "host-not-allowed"
        )
        refused(gw.http.post(WRITE, json={"arguments": {}}, headers=evil), 421, "host-not-allowed")
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        r = gw.http.post("/mcp", json=ping, headers={**evil, "accept": "application/json"})
        refused(r, 421, "host-not-allowed")
        assert written(gw) == 0
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert gw.get("/metrics", headers={"host": host}).status_code == 200, host
            assert gw.get("/api/v1/mcp/servers", headers={"host": host}).status_code == 200


def test_configured_origins_and_hosts_are_let_through(tmp_path: Path) -> None:
    policy = '[mesh]\nallowed_origins = ["https://app.example"]\nallowed_hosts = ["*"]\n'
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        app = {"origin": "https://app.example"}
        assert gw.http.post(WRITE, json={"arguments": {}}, headers=app).status_code == 200
        refused(
            gw.http.post(WRITE, json={"arguments": {}}, headers=EVIL), 403, "origin-not-allowed"
        )
        r = gw.get("/api/v1/mcp/servers", headers={"host": "evil.example"})
        assert r.status_code == 200
        assert gw.get("/metrics", headers={"host": "mesh.internal:8080"}).status_code == 200
        assert written(gw) == 1


def test_a_named_host_list_replaces_the_default(tmp_path: Path) -> None:
    # The test client reaches the gateway as 127.0.0.1, so that stays in the list.
    policy = '[mesh]\nallowed_hosts = ["Mesh.Internal", "127.0.0.1"]\n'
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        assert gw.get("/metrics", headers={"host": "mesh.internal:80"}).status_code == 200
        refused(gw.get("/metrics", headers={"host": "localhost"}), 421, "host-not-allowed")
        refused(gw.get("/metrics", headers={"host": "evil.example"}), 421, "host-not-allowed")
