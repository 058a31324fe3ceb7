"""`/mcp` under generated malformed input, in both eras: a handshake-era session (2025-11-25,
`Mcp-Session-Id`) and stateless 2026-07-28 requests (the `_meta` envelope and the `Mcp-*`
headers). Random JSON values, wrong types for every JSON-RPC member, huge ids, deep nesting,
bytes that are not UTF-8, batches, empty bodies, wrong content types and headers. Every answer
is below 500 and is a JSON-RPC message (a result or an error other than -32603, internal
error) or a problem; the gateway still serves a valid call afterwards.

Left out of the generated methods: `subscriptions/listen` and GET streams, which stay open by
design (their own tests end them), and the fault server's tools other than `echo` (`crash`,
`hang` and the like fail on purpose; their 5xx belong to the upstream, tested elsewhere).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway import Gateway, fault_server, run_gateway
from tests.integration.test_mcp_http import (
    ACCEPT_BOTH,
    ENVELOPE,
    STATELESS,
    _initialize,
    _stateless,
    _stateless_headers,
)

pytestmark = pytest.mark.timeout(180)

INTERNAL_ERROR = -32603

HANDSHAKE = "2025-11-25"
# Examples per test (a few seconds each); more for a deeper search: MESHGATE_FUZZ_EXAMPLES.
EXAMPLES = settings(
    max_examples=int(os.environ.get("MESHGATE_FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = (
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
)


# Text with lone surrogates too: json.dumps escapes them (`"\ud800"`), valid JSON syntax
# that is no Unicode text.
SURROGATES = st.characters(categories=["Cs"])
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.one_of(st.characters(), SURROGATES), max_size=30),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=10), SURROGATES, st.text(max_size=10)),
)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


JSON_VALUES = _json_values()
IDS = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.text(max_size=300),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    JSON_VALUES,
)
NAMES = st.one_of(st.sampled_from(["echo", "fault__echo", "nope"]), st.text(max_size=20))
PARAMS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(NAMES, JSON_VALUES),
            "arguments": st.one_of(st.fixed_dictionaries({"text": TEXT}), JSON_VALUES),
            "_meta": st.one_of(st.just(ENVELOPE), JSON_VALUES),
            "protocolVersion": st.one_of(st.sampled_from([HANDSHAKE, STATELESS]), JSON_VALUES),
            "cursor": JSON_VALUES,
            "taskId": JSON_VALUES,
            "requestId": IDS,
        },
    ),
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.one_of(st.just("2.0"), JSON_VALUES),
        "id": IDS,
        "method": st.one_of(st.sampled_from(METHODS), JSON_VALUES),
        "params": PARAMS,
        "result": JSON_VALUES,
        "error": JSON_VALUES,
    },
)


def _nested(depth: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":' + (
        b"[" * depth + b"]" * depth + b"}"
    )


WELL_FRAMED = st.builds(
    lambda method, id_, params: {"jsonrpc": "2.0", "id": id_, "method": method, "params": params},
    st.sampled_from(METHODS),
    IDS,
    PARAMS,
)
# Calls that reach a tool (the fault server's echo) with generated arguments and ids.
CALLS = st.builds(
    lambda id_, name, arguments: {
        "jsonrpc": "2.0",
        "id": id_,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    },
    IDS,
    st.sampled_from(["echo", "fault__echo"]),
    st.one_of(st.fixed_dictionaries({"text": TEXT}), JSON_VALUES),
)
BODIES = st.one_of(
    MESSAGES.map(lambda m: json.dumps(m).encode()),
    WELL_FRAMED.map(lambda m: json.dumps(m).encode()),
    WELL_FRAMED.map(lambda m: json.dumps(m).encode()),
    st.lists(st.one_of(MESSAGES, WELL_FRAMED), max_size=4).map(lambda b: json.dumps(b).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),  # not JSON, often not UTF-8
    st.just(b""),
    st.integers(min_value=1, max_value=5000).map(_nested),
    MESSAGES.map(lambda m: json.dumps(m).encode() + b"\xff\xfe"),
)
# A header value the client library will send (no surrounding whitespace).
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)
# Mostly right, so that most requests get past the transport's checks to the eras.
CONTENT_TYPES = st.one_of(
    st.just("application/json"),
    st.just("application/json"),
    st.just("application/json"),
    st.sampled_from(
        ["text/plain", "application/json; charset=latin-1", "application/x-www-form-urlencoded", ""]
    ),
    HEADER_TEXT,
)
ACCEPTS = st.one_of(
    st.just(ACCEPT_BOTH),
    st.just(ACCEPT_BOTH),
    st.sampled_from(["application/json", "text/event-stream", "*/*", ""]),
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    servers = {"fault": fault_server(), "hs": fault_server("--era", "handshake")}
    with run_gateway(tmp_path_factory.mktemp("mcp_fuzz"), servers) as gw:
        gw.wait_for("hs", lambda v: v["state"] == "healthy")
        yield gw


def _messages(r: httpx.Response) -> list[Any]:
    """The JSON-RPC messages of a JSON or SSE answer."""
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        return [
            json.loads(line[5:])
            for line in r.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    body = r.json()
    return body if isinstance(body, list) else [body]


def check_answer(r: httpx.Response) -> None:
    """Below 500; a JSON-RPC message or a problem, or nothing where nothing is due."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code == 202 or (r.status_code in (200, 204) and not r.content):
        return  # notifications and responses are accepted with no body
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("application/problem+json"):
        problem = r.json()
        assert problem["status"] == r.status_code and problem["type"], problem
        return
    messages = _messages(r)
    assert messages, r.text[:500]
    for m in messages:
        assert m.get("jsonrpc") == "2.0", m
        assert ("result" in m) != ("error" in m) or "method" in m, m
        if "error" in m:
            assert isinstance(m["error"]["code"], int) and isinstance(m["error"]["message"], str)
            # JSON-RPC's 500: what a client sent must never make the gateway fail inside.
            assert m["error"]["code"] != INTERNAL_ERROR, m
    if r.status_code >= 400:
        assert all("error" in m for m in messages), messages


def still_serves(gw: Gateway) -> None:
    msg = _stateless("tools/call", {"name": "echo", "arguments": {"text": "still"}})
    r = gw.http.post("/mcp/fault", headers=_stateless_headers("tools/call", "echo"), json=msg)
    assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "still", r.text


def _post(gw: Gateway, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    # Headers the client library would add itself are left to it; an empty value is omitted.
    return gw.http.post(
        path, content=body, headers={k: v for k, v in headers.items() if v}, timeout=15
    )


@pytest.fixture(scope="module")
def session(gw: Gateway) -> str:
    return _initialize(gw.http, "/mcp/fault", HANDSHAKE)


@pytest.mark.parametrize("path", ["/mcp/fault", "/mcp/hs", "/mcp"])
def test_handshake_era_session_survives_generated_messages(
    gw: Gateway, path: str, session: str
) -> None:
    sid = session if path == "/mcp/fault" else _initialize(gw.http, path, HANDSHAKE)

    @EXAMPLES
    @given(body=BODIES, ctype=CONTENT_TYPES, accept=ACCEPTS)
    def one(body: bytes, ctype: str, accept: str) -> None:
        headers = {
            "Content-Type": ctype,
            "Accept": accept,
            "Mcp-Session-Id": sid,
            "MCP-Protocol-Version": HANDSHAKE,
        }
        check_answer(_post(gw, path, body, headers))

    one()
    still_serves(gw)
    r = gw.http.post(
        path,
        headers={
            "Accept": ACCEPT_BOTH,
            "Content-Type": "application/json",
            "Mcp-Session-Id": sid,
            "MCP-Protocol-Version": HANDSHAKE,
        },
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert r.status_code == 200 and _messages(r)[0]["result"]["tools"], r.text


@pytest.mark.parametrize("path", ["/mcp/fault", "/mcp"])
def test_stateless_era_survives_generated_messages(gw: Gateway, path: str) -> None:
    @EXAMPLES
    @given(
        body=BODIES,
        ctype=CONTENT_TYPES,
        accept=ACCEPTS,
        method=st.one_of(st.sampled_from(METHODS), HEADER_TEXT),
        name=st.one_of(st.none(), NAMES.filter(str.isprintable), HEADER_TEXT),
        version=st.one_of(st.just(STATELESS), st.just(STATELESS), HEADER_TEXT),
    )
    def one(
        body: bytes, ctype: str, accept: str, method: str, name: str | None, version: str
    ) -> None:
        headers = {
            "Content-Type": ctype,
            "Accept": accept,
            "MCP-Protocol-Version": version,
            "Mcp-Method": method,
        }
        if name is not None and name.isascii():
            headers["Mcp-Name"] = name
        check_answer(_post(gw, path, body, headers))

    one()
    still_serves(gw)


def test_well_formed_session_requests_with_generated_params(gw: Gateway, session: str) -> None:
    """Well-framed requests on a live session, so that the generated params reach the
    method."""
    headers = {
        "Accept": ACCEPT_BOTH,
        "Content-Type": "application/json",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": HANDSHAKE,
    }

    @EXAMPLES
    @given(message=st.one_of(WELL_FRAMED, CALLS, MESSAGES))
    def one(message: dict[str, Any]) -> None:
        check_answer(_post(gw, "/mcp/fault", json.dumps(message).encode(), headers))

    one()
    still_serves(gw)


def test_well_formed_stateless_requests_with_generated_params(gw: Gateway) -> None:
    """Headers that match the body, so that the generated params reach the method."""

    @EXAMPLES
    @given(message=st.one_of(WELL_FRAMED, CALLS))
    def one(message: dict[str, Any]) -> None:
        body = dict(message)
        method = body["method"]
        if isinstance(body["params"], dict):
            body["params"] = {**body["params"], "_meta": ENVELOPE}
        else:
            del body["params"]
        name = body.get("params", {}).get("name")
        headers = _stateless_headers(
            method,
            name if isinstance(name, str) and name.isascii() and name.isprintable() else None,
        )
        check_answer(_post(gw, "/mcp/fault", json.dumps(body).encode(), headers))

    one()
    still_serves(gw)
