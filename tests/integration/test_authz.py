"""Policy on every entry: REST, /mcp (lists filtered, calls refused), the HTTP proxy, task
enqueue and execution, and the mesh's own operations, against a real gateway whose requests
without a credential run with a `guest` role."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import Gateway, Seen, fault_server, recording_service, run_gateway
from tests.integration.test_mcp_http import (
    ACCEPT_BOTH,
    _initialize,
    _sse_messages,
    _stateless,
    _stateless_headers,
)

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
PROBLEM = "application/problem+json"

POLICY = """
[auth]
anonymous_roles = ["guest"]

[roles.guest]
allow = ["mcp:fault/echo", "mcp:fault/env", "mesh:enqueue", "http:svc GET /open"]
deny = ["mcp:fault/env"]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, list[Seen]]]:
    with recording_service() as (svc_url, seen):
        static = f"""
[[mesh.services]]
name = "svc"
url = "{svc_url}"
check = {{ type = "tcp" }}
"""
        tmp = tmp_path_factory.mktemp("authz")
        with run_gateway(tmp, {"fault": fault_server()}, POLICY + static) as gw:
            yield gw, seen


def forbidden(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/forbidden") and body["principal"] == "anonymous"
    return body


def rpc(gw: Gateway, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stateless (2026-07-28) /mcp request."""
    name = (params or {}).get("name")
    r = gw.http.post(
        "/mcp", headers=_stateless_headers(method, name), json=_stateless(method, params)
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_rest_tool_calls_follow_the_rules(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    assert g.call("fault", "echo", {"text": "hi"}).status_code == 200
    body = forbidden(g.call("fault", "write"))
    assert "write" in body["detail"]
    forbidden(g.call("fault", "env"))  # allowed, then denied: deny wins
    # A tool that does not exist on a server the caller may not use: 403, not 404.
    forbidden(g.call("fault", "no_such_tool"))


def test_mcp_lists_only_what_the_caller_may_call(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    tools = rpc(g, "tools/list")["result"]["tools"]
    assert [t["name"] for t in tools] == ["fault__echo"]
    answer = rpc(g, "tools/call", {"name": "fault__write", "arguments": {}})
    assert answer["error"]["code"] == -32014, answer
    assert "write" in answer["error"]["message"]
    ok = rpc(g, "tools/call", {"name": "fault__echo", "arguments": {"text": "x"}})
    assert "result" in ok, ok


def test_rest_tool_list_is_filtered_and_details_need_discover(
    gw: tuple[Gateway, list[Seen]],
) -> None:
    g, _ = gw
    r = g.get("/api/v1/mcp/servers/fault/tools")
    assert [t["name"] for t in r.json()["items"]] == ["echo"]
    forbidden(g.get("/api/v1/mcp/servers"))
    forbidden(g.get(f"{API}/services"))
    forbidden(g.get(f"{API}/topology"))
    forbidden(g.get("/metrics"))


def test_proxy_is_refused_before_the_body_is_read(gw: tuple[Gateway, list[Seen]]) -> None:
    g, seen = gw
    assert g.get(f"{API}/call/svc/open").status_code == 200
    before = len(seen)
    forbidden(g.get(f"{API}/call/svc/admin"))
    forbidden(g.http.post(f"{API}/call/svc/open", content=b"x" * 1000))
    assert len(seen) == before  # nothing reached the service


def test_registration_needs_the_operation(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    r = g.http.post(f"{API}/register", json={"name": "evil", "url": "http://127.0.0.1:9"})
    forbidden(r)
    r = g.http.delete(f"{API}/services/svc/instances/whatever")
    forbidden(r)


def test_tasks_run_with_the_enqueuers_rights(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    # Refused at once when the target is not allowed: nothing is stored.
    forbidden(g.http.post(f"{API}/enqueue", json={"target": {"server": "fault", "tool": "write"}}))
    r = g.http.post(
        f"{API}/enqueue",
        json={"target": {"server": "fault", "tool": "echo", "arguments": {"text": "t"}}},
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    end = time.monotonic() + 30
    while True:
        task = g.get(f"{API}/task/{task_id}", params={"wait_s": 5}).json()
        if task["status"] in ("succeeded", "failed", "dead") or time.monotonic() > end:
            break
    assert task["status"] == "succeeded", task
    assert task["target"]["principal"]["name"] == "anonymous"


def test_a_wrong_credential_gets_401_with_the_resource_metadata(
    gw: tuple[Gateway, list[Seen]],
) -> None:
    g, _ = gw
    for path in ("/mcp", "/mcp/fault", f"{API}/services"):
        r = g.http.post(
            path,
            headers={"authorization": "Bearer not-a-token", "accept": ACCEPT_BOTH},
            json={},
        )
        assert r.status_code == 401, r.text
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
        resource = "/mcp/fault" if path == "/mcp/fault" else "/mcp" if path == "/mcp" else ""
        url = f"{g.url}/.well-known/oauth-protected-resource{resource}"
        assert f'resource_metadata="{url}"' in challenge
        metadata = httpx.get(url).json()
        assert metadata["resource"] == g.url + resource
        assert metadata["bearer_methods_supported"] == ["header"]


def test_public_paths_need_nothing(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    bad = {"authorization": "Bearer nope"}
    assert g.get("/livez", headers=bad).status_code == 200
    assert g.get("/readyz", headers=bad).status_code == 200


def test_unknown_metadata_resource_is_404(gw: tuple[Gateway, list[Seen]]) -> None:
    g, _ = gw
    assert g.get("/.well-known/oauth-protected-resource/api/v1").status_code == 404


SERVE_ARGS = ("--config", "mcp.json", "--host", "0.0.0.0", "--port", "0", "--data-dir", "")


def test_serving_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "mcp.json").write_text('{"mcpServers": {}}')
    out = subprocess.run(
        [sys.executable, "-m", "meshgate.cli", "serve", *SERVE_ARGS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in out.stderr
    assert "--insecure" in out.stderr


def test_a_dedicated_sessions_own_tool_list_is_filtered_too(tmp_path: Path) -> None:
    policy = POLICY + '\n[servers.fault]\nmode = "dedicated"\n'
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as g:
        session = _initialize(g.http, "/mcp/fault")
        headers = {
            "Accept": ACCEPT_BOTH,
            "Content-Type": "application/json",
            "Mcp-Session-Id": session,
            "MCP-Protocol-Version": "2025-11-25",
        }
        msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        r = g.http.post("/mcp/fault", headers=headers, json=msg)
        assert r.status_code == 200, r.text
        body = r.json() if r.headers["content-type"].startswith("application/json") else None
        if body is None:  # an SSE answer
            body = next(m for m in _sse_messages(r.text) if m.get("id") == 1)
        assert "result" in body, body
        assert [t["name"] for t in body["result"]["tools"]] == ["echo"]
        msg = {"jsonrpc": "2.0", "id": 2, "method": "prompts/list"}
        r = g.http.post("/mcp/fault", headers=headers, json=msg)
        assert r.status_code == 200, r.text
