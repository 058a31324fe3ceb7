"""REST bodies at the edge: JSON nested deeper than the bound, or holding text that is not
Unicode, is a 400 problem on every route that reads a JSON body, never a 500 with a
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
N = 100_000


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


# Every REST route that reads a JSON body, with a body whose `hole` a deep value fills.
ROUTES = {
    "register": (
        f"{API}/register",
        '{"name": "deep", "url": "http://127.0.0.1:9", "metadata": %s}',
    ),
    "tool call": ("/api/v1/mcp/servers/fault/tools/echo", '{"arguments": {"text": %s}}'),
    "enqueue": (
        f"{API}/enqueue",
        '{"target": {"server": "fault", "tool": "echo", "arguments": {"text": %s}}}',
    ),
}

DEEP = {
    "arrays": nest(N),
    "unclosed arrays": "[" * N,
    "objects": '{"a":' * N + "1" + "}" * N,
    "mixed": '[{"a":' * (N // 2) + "1" + "}]" * (N // 2),
}


def post(gw: Gateway, path: str, body: str) -> tuple[int, str, dict[str, object] | str]:
    r = gw.http.post(path, content=body.encode(), headers={"content-type": "application/json"})
    ctype = r.headers.get("content-type", "")
    return r.status_code, ctype, r.json() if "json" in ctype else r.text


def test_deeply_nested_bodies_are_refused_on_every_json_route(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        for route, (path, template) in ROUTES.items():
            for kind, value in DEEP.items():
                status, ctype, problem = post(gw, path, template % value)
                assert status == 400, (route, kind, status, problem)
                assert ctype == "application/problem+json", (route, kind)
                assert isinstance(problem, dict)
                assert str(problem["type"]).endswith("/invalid-input"), problem
                assert "deeper than 64" in str(problem["detail"]), problem
            # A whole body that is nothing but brackets.
            status, ctype, problem = post(gw, path, nest(N))
            assert (status, ctype) == (400, "application/problem+json"), (route, problem)
        # Nothing was registered or queued, the gateway is well, and it logged no traceback.
        assert gw.get(f"{API}/services/deep").status_code == 404
        assert gw.get(f"{API}/tasks").json()["items"] == []
        assert gw.get(f"{API}/health").status_code == 200
        assert not [line for line in gw.log if "Traceback" in line or "Exception in ASGI" in line]


def test_the_depth_bound_is_a_setting_and_exact(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, "[mesh]\nmax_json_depth = 8\n") as gw:
        # register: the body, metadata, then `k` arrays: 2 + k levels.
        path, template = ROUTES["register"]
        status, _, body = post(gw, path, template % json.dumps({"x": json.loads(nest(6))}))
        assert status == 201, body
        status, _, body = post(gw, path, template % json.dumps({"x": json.loads(nest(7))}))
        assert status == 400 and "deeper than 8" in str(body), body
        # Brackets in strings do not count.
        status, _, body = post(gw, path, template % json.dumps({"x": "[" * 50 + '\\"{'}))
        assert status == 200, body  # the same registration again: unchanged
        # enqueue: the body, target, arguments, then `k` arrays: 3 + k levels.
        path, template = ROUTES["enqueue"]
        status, _, body = post(gw, path, template % nest(5))
        assert status == 202, body
        status, _, body = post(gw, path, template % nest(6))
        assert status == 400, body


def test_deeply_nested_mcp_messages_are_refused_with_a_json_rpc_error(tmp_path: Path) -> None:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        for kind, value in DEEP.items():
            body = (
                '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
                '"params": {"name": "echo", "arguments": {"text": ' + value + "}}}"
            )
            r = gw.http.post("/mcp/fault", content=body.encode(), headers=headers)
            assert r.status_code == 400, (kind, r.text)
            error = r.json()["error"]
            assert error["code"] == -32600 and "deeper than 64" in error["message"], error
        assert not [line for line in gw.log if "Traceback" in line]


# Half a surrogate pair, escaped: valid JSON syntax, but no character, so no UTF-8 carries it
# on (to an MCP server's stdin, a task store, a log). It used to reach the upstream's encoder
# and answer 500.
LONE = ('"\\ud800"', '"a\\udfff"', '"\\uDBFF\\u0041"')
PAIR = '"\\ud83d\\ude00"'  # an escaped emoji, as ASCII-only encoders write it: accepted


def test_lone_surrogates_are_refused_on_every_json_route(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        for route, (path, template) in ROUTES.items():
            for value in LONE:
                for body in (template % value, template % ("{" + value + ": 1}")):
                    status, ctype, problem = post(gw, path, body)
                    assert (status, ctype) == (400, "application/problem+json"), (route, body)
                    assert isinstance(problem, dict)
                    assert "surrogate" in str(problem["detail"]), problem
        status, _, answer = post(gw, ROUTES["tool call"][0], ROUTES["tool call"][1] % PAIR)
        assert status == 200, answer
        assert isinstance(answer, dict) and isinstance(answer["content"], list)
        assert answer["content"][0]["text"] == "\U0001f600"
        assert gw.get(f"{API}/tasks").json()["items"] == []
        assert not [line for line in gw.log if "Traceback" in line or "Exception in ASGI" in line]


def test_lone_surrogates_in_mcp_messages_are_parse_errors(tmp_path: Path) -> None:
    stateless = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    envelope = (
        '"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", '
        '"io.modelcontextprotocol/clientCapabilities": {}}'
    )

    def call(id_: str, text: str) -> str:
        return (
            '{"jsonrpc": "2.0", "id": ' + id_ + ', "method": "tools/call", "params": '
            '{"name": "echo", "arguments": {"text": ' + text + "}, " + envelope + "}}"
        )

    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        for value in LONE:
            for body in (call("1", value), call(value, '"x"')):
                r = gw.http.post("/mcp/fault", content=body.encode(), headers=stateless)
                assert r.status_code == 400, (body, r.text)
                error = r.json()["error"]
                assert error["code"] == -32700 and "surrogate" in error["message"], error
        r = gw.http.post("/mcp/fault", content=call("2", PAIR).encode(), headers=stateless)
        assert r.json()["result"]["content"][0]["text"] == "\U0001f600", r.text
        assert not [line for line in gw.log if "Traceback" in line]
