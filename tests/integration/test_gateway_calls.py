"""Calls through a real gateway to real MCP servers: happy paths, eras and bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.gateway import fault_server, npm_server, run_gateway

pytestmark = pytest.mark.timeout(120)

TIME_SERVER = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))


def _text(result: dict[str, object]) -> str:
    content = result["content"]
    assert isinstance(content, list)
    return "".join(str(c["text"]) for c in content if c.get("type") == "text")


@pytest.mark.skipif(TIME_SERVER is None, reason="mcp-server-time is installed by make setup")
def test_tool_call_reaches_real_time_server(tmp_path: Path) -> None:
    assert TIME_SERVER is not None
    with run_gateway(tmp_path, {"time": {"command": TIME_SERVER}}) as gw:
        view = gw.server("time")
        assert view["state"] == "healthy"
        assert "get_current_time" in view["tools"]
        [inst] = view["instances"]
        assert inst["state"] == "healthy" and inst["pid"] > 0
        assert inst["era"] in ("stateless", "handshake")

        r = gw.call("time", "get_current_time", {"timezone": "Europe/Paris"})
        assert r.status_code == 200, r.text
        assert json.loads(_text(r.json()))["timezone"] == "Europe/Paris"

        tools = gw.get("/api/v1/mcp/servers/time/tools").json()
        assert {t["name"] for t in tools["items"]} >= {"get_current_time", "convert_time"}
        assert tools["next_cursor"] is None


def test_tool_call_reaches_server_everything(tmp_path: Path) -> None:
    servers = {"everything": npm_server("mcp-server-everything")}
    with run_gateway(tmp_path, servers, "[servers.everything]\ninstances = 2\n") as gw:
        view = gw.wait_for(
            "everything", lambda v: all(i["state"] == "healthy" for i in v["instances"])
        )
        assert len({i["pid"] for i in view["instances"]}) == 2
        for _ in range(4):
            r = gw.call("everything", "echo", {"message": "hello mesh"})
            assert r.status_code == 200, r.text
            assert "hello mesh" in _text(r.json())
        r = gw.call("everything", "get-sum", {"a": 2, "b": 3})
        assert r.status_code == 200 and "5" in _text(r.json())


@pytest.mark.parametrize(
    ("era", "expected"),
    [("stateless", "stateless"), ("handshake", "handshake"), ("both", "stateless")],
)
def test_instance_era_is_discovered(tmp_path: Path, era: str, expected: str) -> None:
    policy = "[defaults.health]\ninterval_s = 0.2\n"
    with run_gateway(tmp_path, {"f": fault_server("--era", era)}, policy) as gw:
        [inst] = gw.instances("f")
        assert inst["era"] == expected
        assert gw.call("f", "echo", {"text": "hi"}).json()["content"][0]["text"] == "hi"
        # Health probes of the instance's era succeed (discover or ping).
        gw.wait_for("f", lambda v: (v["instances"][0].get("last_health") or {}).get("ok"))


def test_server_that_dies_on_discover_is_restarted_as_handshake_era(tmp_path: Path) -> None:
    servers = {"old": fault_server("--era", "handshake", "--exit-before-initialize")}
    with run_gateway(tmp_path, servers, "[defaults.restart]\nbackoff_base_s = 0.01\n") as gw:
        view = gw.wait_for("old", lambda v: v["instances"][0]["state"] == "healthy")
        [inst] = view["instances"]
        assert inst["era"] == "handshake"
        assert inst["restarts"] == 1
        assert gw.call("old", "echo", {"text": "hi"}).status_code == 200


def test_openapi_describes_the_api(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        spec = gw.get("/openapi.json").json()
        paths = spec["paths"]
        assert "/api/v1/mcp/servers/{name}/tools/{tool}" in paths
        assert "/api/v1/mesh/v2/health" in paths
        assert gw.get("/docs").status_code == 200


def test_unknown_server_and_tool_are_404_problems(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        r = gw.call("nope", "echo")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/unknown-service")
        r = gw.call("f", "no_such_tool")
        assert r.status_code == 404
        assert "no_such_tool" in r.json()["detail"]
        assert gw.get("/api/v1/mcp/servers/nope/tools").status_code == 404
        assert gw.get("/api/v1/nothing/here").status_code == 404


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    policy = "[mesh]\nmax_body_bytes = 2048\n"
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        url = "/api/v1/mcp/servers/f/tools/echo"
        post = gw.http.post
        r = post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = post(url, json=[1, 2])
        assert r.status_code == 400
        r = post(url, json={"arguments": "text"})
        assert r.status_code == 422 and "arguments" in r.json()["detail"]
        r = post(url, json={"arguments": {}, "surprise": 1})
        assert r.status_code == 422 and "surprise" in r.json()["detail"]
        r = post(url, json={"arguments": {}, "timeout_s": -1})
        assert r.status_code == 422
        r = post(url, json={"arguments": {"text": "x" * 5000}})
        assert r.status_code == 413
        # The server itself rejects bad arguments: the caller learns why.
        r = gw.call("f", "echo", {"text": 42})
        assert r.status_code in (200, 422)
        # The gateway is intact after all of that.
        assert gw.call("f", "echo", {"text": "still here"}).status_code == 200


def test_server_errors_are_reported_not_hidden(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        r = gw.call("f", "fail")
        assert r.status_code == 502
        body = r.json()
        assert body["upstream_code"] == -32603 and "injected" in body["upstream_message"]
        r = gw.call("f", "tool_error")
        assert r.status_code == 200 and r.json()["isError"] is True
        # A JSON-RPC error is an answer: the breaker stays closed.
        assert gw.instances("f")[0]["breaker"] == "closed"


def test_garbage_on_stdout_is_counted_not_fatal(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server("--garbage-on-start")}) as gw:
        r = gw.call("f", "garbage", {"lines": 3})
        assert r.status_code == 200, r.text
        [inst] = gw.instances("f")
        assert inst["state"] == "healthy"
        assert inst["garbage_lines"] >= 4
        assert inst["restarts"] == 0


def test_huge_results_pass_and_oversized_ones_fail_fast(tmp_path: Path) -> None:
    policy = "[servers.small]\nmax_line_bytes = 65536\n"
    servers = {"big": fault_server(), "small": fault_server()}
    with run_gateway(tmp_path, servers, policy) as gw:
        r = gw.call("big", "huge", {"bytes": 5_000_000})
        assert r.status_code == 200
        assert len(_text(r.json())) == 5_000_000
        r = gw.call("small", "huge", {"bytes": 200_000}, timeout_s=20)
        assert r.status_code == 502
        assert "larger than 65536" in r.json()["detail"]
        assert gw.call("small", "echo", {"text": "ok"}).status_code == 200


def test_catalog_follows_list_changed(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        assert gw.call("f", "add_tool", {"name": "fresh"}).status_code == 200
        gw.wait_for("f", lambda v: "fresh" in v["tools"], timeout=10)
        r = gw.call("f", "fresh", {"text": "new"})
        assert r.status_code == 200


def test_server_requests_are_answered(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server("--era", "handshake")}) as gw:
        r = gw.call("f", "ask_roots")
        assert r.status_code == 200
        assert '"roots": []' in _text(r.json()) or '"roots":[]' in _text(r.json())
        r = gw.call("f", "ask_sampling")
        assert r.status_code == 200
        assert "sampling/createMessage" in _text(r.json())


def test_health_summary_counts_instances(tmp_path: Path) -> None:
    servers = {"a": fault_server(), "b": fault_server("--exit-immediately", "3")}
    policy = "[servers.b.restart]\nmax_failures = 1\n"
    with run_gateway(tmp_path, servers, policy) as gw:
        body = gw.get("/api/v1/mesh/v2/health").json()
        assert body["services"]["a"]["healthy"] == 1
        assert body["services"]["b"]["healthy"] == 0
        assert body["status"] == "unhealthy"
        assert body["registry"]["backend"] == "embedded"
