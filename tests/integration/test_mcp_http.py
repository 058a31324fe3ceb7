"""MCP Streamable HTTP at /mcp and /mcp/{name}: real SDK clients, both eras, raw protocol edges."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp_types import ToolListChangedNotification

from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

MODES = ("legacy", "auto")
ACCEPT_BOTH = "application/json, text/event-stream"
STATELESS = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    servers = {"fault": fault_server(), "hs": fault_server("--era", "handshake")}
    with run_gateway(tmp_path_factory.mktemp("mcp_http"), servers) as gw:
        gw.wait_for("hs", lambda v: v["state"] == "healthy")
        yield gw


def _texts(result: Any) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def _headers(**extra: str) -> dict[str, str]:
    return {"Accept": ACCEPT_BOTH, "Content-Type": "application/json", **extra}


def _initialize(http: httpx.Client, path: str, version: str = "2025-11-25") -> str:
    r = http.post(
        path,
        headers=_headers(),
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == version
    session: str = r.headers["mcp-session-id"]
    http.post(
        path,
        headers=_headers(**{"Mcp-Session-Id": session, "MCP-Protocol-Version": version}),
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
    ).raise_for_status()
    return session


def _stateless(method: str, params: dict[str, Any] | None = None, id_: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "method": method,
        "params": {**(params or {}), "_meta": ENVELOPE},
    }


def _stateless_headers(method: str, name: str | None = None) -> dict[str, str]:
    h = _headers(**{"MCP-Protocol-Version": STATELESS, "Mcp-Method": method})
    if name is not None:
        h["Mcp-Name"] = name
    return h


def _sse_messages(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:])
        for line in text.splitlines()
        if line.startswith("data:") and line[5:].strip()
    ]


def _stats(gw: Gateway, server: str) -> dict[str, Any]:
    r = gw.call(server, "stats")
    assert r.status_code == 200, r.text
    stats: dict[str, Any] = json.loads(r.json()["content"][0]["text"])
    return stats


# -- real SDK clients ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sdk_client_one_server_and_aggregate(gw: Gateway, mode: str) -> None:
    async def main() -> None:
        async with Client(f"{gw.url}/mcp/fault", mode=mode) as c:
            assert c.protocol_version == ("2025-11-25" if mode == "legacy" else STATELESS)
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"echo", "crash", "progress"} <= names
            r = await c.call_tool("echo", {"text": "hello"})
            assert _texts(r) == ["hello"] and not r.is_error
            bad = await c.call_tool("tool_error", {})
            assert bad.is_error
        async with Client(f"{gw.url}/mcp", mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"fault__echo", "hs__echo"} <= names
            for name in ("fault__echo", "hs__echo"):  # a stateless and a handshake-era upstream
                assert _texts(await c.call_tool(name, {"text": name})) == [name]

    anyio.run(main)


@pytest.mark.parametrize("mode", MODES)
def test_progress_reaches_the_calling_client(gw: Gateway, mode: str) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async def main() -> None:
        async with Client(f"{gw.url}/mcp", mode=mode) as c:
            r = await c.call_tool("hs__progress", {"steps": 4}, progress_callback=on_progress)
            assert _texts(r) == ["4 steps"]

    anyio.run(main)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_list_changed_reaches_sessions_and_listeners(tmp_path: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            changed.set()

    async def main(gw: Gateway) -> None:
        async with (
            Client(f"{gw.url}/mcp", mode="legacy", message_handler=on_message) as legacy,
            Client(f"{gw.url}/mcp/fault") as modern,
        ):
            async with modern.listen(tools_list_changed=True) as sub:
                await modern.call_tool("add_tool", {"name": "fresh"})
                with anyio.fail_after(10):
                    async for _event in sub:
                        break
            names = {t.name for t in (await modern.list_tools(cache_mode="bypass")).tools}
            assert "fresh" in names
            with anyio.fail_after(10):
                await changed.wait()
            names = {t.name for t in (await legacy.list_tools()).tools}
            assert "fault__fresh" in names

    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        anyio.run(main, gw)


@pytest.mark.parametrize("mode", MODES)
def test_killed_instance_mid_session_is_replaced_and_the_session_goes_on(
    tmp_path: Path, mode: str
) -> None:
    policy = "[servers.fault]\ninstances = 2\n"

    async def main(gw: Gateway) -> None:
        async with Client(f"{gw.url}/mcp/fault", mode=mode) as c:
            victim = gw.instances("fault")[0]
            os.kill(victim["pid"], signal.SIGKILL)
            for i in range(40):  # read-only: retried on the survivor while the slot restarts
                assert _texts(await c.call_tool("echo", {"text": str(i)})) == [str(i)]
            await anyio.to_thread.run_sync(
                lambda: gw.wait_for(
                    "fault",
                    lambda v: (
                        all(i["state"] == "healthy" for i in v["instances"])
                        and victim["pid"] not in [i["pid"] for i in v["instances"]]
                    ),
                )
            )
            assert _texts(await c.call_tool("echo", {"text": "after"})) == ["after"]

    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        anyio.run(main, gw)


# -- handshake-era sessions over raw HTTP -------------------------------------------------------


def test_session_lifecycle_and_errors(gw: Gateway) -> None:
    http = gw.http
    sid = _initialize(http, "/mcp/fault")
    h = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}

    r = http.post(
        "/mcp/fault",
        headers=h,
        json={**call, "params": {"name": "echo", "arguments": {"text": "x"}}},
    )
    assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "x"

    # the session belongs to its endpoint
    assert (
        http.post("/mcp/hs", headers=h, json={**call, "params": {"name": "echo"}}).status_code
        == 404
    )
    # unknown tool: a JSON-RPC error naming it
    r = http.post("/mcp/fault", headers=h, json={**call, "params": {"name": "nope"}})
    assert r.json()["error"]["code"] == -32602 and "nope" in r.json()["error"]["message"]
    # unknown method
    r = http.post("/mcp/fault", headers=h, json={"jsonrpc": "2.0", "id": 8, "method": "x/y"})
    assert r.json()["error"]["code"] == -32601
    # wrong protocol version header for this session
    bad = {**h, "MCP-Protocol-Version": "2025-06-18"}
    assert http.post("/mcp/fault", headers=bad, json={**call, "params": {}}).status_code == 400
    # batches belong to 2025-03-26 only
    r = http.post("/mcp/fault", headers=h, json=[{**call, "params": {"name": "echo"}}])
    assert r.status_code == 400 and "2025-03-26" in r.json()["error"]["message"]
    # no session id, unknown session id
    r = http.post("/mcp/fault", headers=_headers(), json={**call, "params": {}})
    assert r.status_code == 400 and "initialize" in r.json()["error"]["message"]
    r = http.post(
        "/mcp/fault", headers={**h, "Mcp-Session-Id": "nope"}, json={**call, "params": {}}
    )
    assert r.status_code == 404
    # end it; then it is gone
    assert http.delete("/mcp/fault", headers=h).status_code == 204
    assert http.post("/mcp/fault", headers=h, json={**call, "params": {}}).status_code == 404
    assert http.delete("/mcp/fault", headers=h).status_code == 404


def test_bad_requests_get_clear_errors_and_nothing_breaks(gw: Gateway) -> None:
    http = gw.http
    r = http.post("/mcp/fault", headers=_headers(), content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    r = http.post("/mcp/fault", headers=_headers(), content=b'"a string"')
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600
    r = http.post("/mcp/nowhere", headers=_headers(), json=_stateless("tools/list"))
    assert r.status_code == 404 and "nowhere" in r.json()["error"]["message"]
    r = http.post("/mcp/fault", headers=_headers(Origin="http://evil.example"), json={})
    assert r.status_code == 403 and "allowed_origins" in r.json()["error"]["message"]
    r = http.post(
        "/mcp/fault",
        headers=_headers(Origin="http://localhost:3000"),
        json=_stateless("tools/list"),
    )
    assert r.status_code == 400  # allowed origin; refused for its missing headers instead
    r = http.post("/mcp/fault", headers=_headers(), content=b"[" + b"1," * 600_000 + b"1]")
    assert r.status_code == 413
    r = http.post("/mcp/fault", headers={"Accept": "text/html"}, json={})
    assert r.status_code == 406
    r = http.post("/mcp/fault", headers=_headers(**{"Content-Type": "text/plain"}), content=b"{}")
    assert r.status_code == 415
    assert http.put("/mcp/fault", headers=_headers(), json={}).status_code == 405
    assert http.get("/mcp/fault", headers={"Accept": "text/event-stream"}).status_code == 400
    # the gateway still works
    sid = _initialize(http, "/mcp/fault")
    assert sid


def test_batch_in_2025_03_26(gw: Gateway) -> None:
    sid = _initialize(gw.http, "/mcp/fault", "2025-03-26")
    h = _headers(**{"Mcp-Session-Id": sid})  # 2025-03-26 clients send no version header
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "a"}},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    r = gw.http.post("/mcp/fault", headers=h, json=batch)
    assert r.status_code == 200, r.text
    replies = {m["id"]: m for m in r.json()}
    assert replies[1]["result"]["content"][0]["text"] == "a"
    assert any(t["name"] == "echo" for t in replies[2]["result"]["tools"])


def test_cancelled_notification_cancels_upstream(gw: Gateway) -> None:
    sid = _initialize(gw.http, "/mcp/hs")
    h = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    before = len(_stats(gw, "hs")["cancelled"])

    def cancel_once_upstream() -> None:
        gw.wait_for("hs", lambda v: v["instances"][0]["in_flight"] == 1, timeout=10)
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": "c-1"},
        }
        with httpx.Client(base_url=gw.url) as other:
            assert other.post("/mcp/hs", headers=h, json=note).status_code == 202

    canceller = threading.Thread(target=cancel_once_upstream)
    canceller.start()
    call = {"jsonrpc": "2.0", "id": "c-1", "method": "tools/call", "params": {"name": "hang"}}
    r = gw.http.post("/mcp/hs", headers=h, json=call)
    canceller.join()
    assert r.json()["error"]["message"] == "request cancelled"
    deadline = time.monotonic() + 10
    while len(_stats(gw, "hs")["cancelled"]) == before:
        assert time.monotonic() < deadline, "the upstream never heard of the cancellation"
        time.sleep(0.05)


def test_sse_stream_resumes_with_last_event_id(gw: Gateway) -> None:
    sid = _initialize(gw.http, "/mcp/hs")
    h = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 30}, "_meta": {"progressToken": "p"}},
    }
    first_id = None
    with gw.http.stream("POST", "/mcp/hs", headers=h, json=call) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id:") and line[3:].strip().split(".")[-1] not in ("0",):
                first_id = line[3:].strip()
                break
    assert first_id is not None  # disconnected after the first progress event
    r = gw.http.get(
        "/mcp/hs", headers={**h, "Last-Event-ID": first_id, "Accept": "text/event-stream"}
    )
    messages = _sse_messages(r.text)
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert progress and progress[0]["params"]["progress"] > 1  # replay starts after that event
    assert messages[-1]["id"] == 5 and messages[-1]["result"]["content"][0]["text"] == "30 steps"


def _use(gw: Gateway, session: str, id_: int = 2) -> httpx.Response:
    """A request in a session (which makes it a session in use)."""
    h = _headers(**{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    return gw.http.post(
        "/mcp/fault", headers=h, json={"jsonrpc": "2.0", "id": id_, "method": "tools/list"}
    )


def _sessions_open(gw: Gateway) -> float:
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith("meshgate_sessions "):
            return float(line.split()[1])
    raise AssertionError("no meshgate_sessions in /metrics")


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25"},
}


def test_session_limit_and_idle_expiry(tmp_path: Path) -> None:
    # Short enough to wait for, long enough that both sessions outlive the third initialize.
    env = {"MESHGATE_MAX_SESSIONS": "2", "MESHGATE_SESSION_IDLE_TIMEOUT_S": "2"}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        first = _initialize(gw.http, "/mcp/fault")
        second = _initialize(gw.http, "/mcp/fault")
        assert _use(gw, first).status_code == 200 and _use(gw, second).status_code == 200
        r = gw.http.post("/mcp/fault", headers=_headers(), json=INIT)
        assert r.status_code == 503 and "max_sessions" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        # Both sessions idle out: the same initialize (which touches neither) is then accepted.
        deadline = time.monotonic() + 30
        while r.status_code == 503:
            assert time.monotonic() < deadline, "idle sessions were never ended"
            time.sleep(0.05)
            r = gw.http.post("/mcp/fault", headers=_headers(), json=INIT)
        assert r.status_code == 200, r.text
        assert _use(gw, first).status_code == 404
        assert _initialize(gw.http, "/mcp/fault")


def test_an_initialize_flood_does_not_lock_clients_out(tmp_path: Path) -> None:
    """50 initializes that nobody follows up (the whole of max_sessions): a new client still
    gets in at once, in place of the oldest unused session, and the flood is gone after the
    unused timeout rather than the idle timeout (30 minutes)."""
    env = {"MESHGATE_MAX_SESSIONS": "50", "MESHGATE_SESSION_UNUSED_TIMEOUT_S": "2"}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        flood = []
        for _ in range(50):
            r = gw.http.post("/mcp/fault", headers=_headers(), json=INIT)
            assert r.status_code == 200, r.text
            flood.append(r.headers["mcp-session-id"])
        assert _sessions_open(gw) == 50
        client = _initialize(gw.http, "/mcp/fault")
        assert _use(gw, client).status_code == 200
        assert _use(gw, flood[0]).status_code == 404  # the oldest unused session gave way
        assert _sessions_open(gw) == 50
        deadline = time.monotonic() + 30
        while _sessions_open(gw) > 1:  # only the client's session, in use, stays
            assert time.monotonic() < deadline, "unused sessions were never ended"
            time.sleep(0.05)
        assert _use(gw, client, 3).status_code == 200
        assert _use(gw, flood[-1]).status_code == 404


# -- stateless era over raw HTTP ----------------------------------------------------------------


def test_stateless_envelope_and_headers_are_checked(gw: Gateway) -> None:
    http = gw.http
    r = http.post(
        "/mcp/fault",
        headers=_stateless_headers("server/discover"),
        json=_stateless("server/discover"),
    )
    body = r.json()["result"]
    assert STATELESS in body["supportedVersions"] and body["resultType"] == "complete"
    assert body["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "fault"
    assert {"ttlMs", "cacheScope"} <= set(body)

    r = http.post(
        "/mcp/fault", headers=_stateless_headers("tools/list"), json=_stateless("tools/list")
    )
    assert r.status_code == 200 and r.json()["result"]["ttlMs"] >= 0

    msg = _stateless("tools/call", {"name": "echo", "arguments": {"text": "s"}})
    r = http.post("/mcp/fault", headers=_stateless_headers("tools/call", "echo"), json=msg)
    assert r.json()["result"]["content"][0]["text"] == "s"
    # Mcp-Name must match, Mcp-Method must match, the version must be known
    r = http.post("/mcp/fault", headers=_stateless_headers("tools/call", "other"), json=msg)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020
    r = http.post("/mcp/fault", headers=_stateless_headers("tools/list", "echo"), json=msg)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020
    old = {
        **msg,
        "params": {
            **msg["params"],
            "_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2030-01-01"},
        },
    }
    hdrs = {**_stateless_headers("tools/call", "echo"), "MCP-Protocol-Version": "2030-01-01"}
    r = http.post("/mcp/fault", headers=hdrs, json=old)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32022
    assert r.json()["error"]["data"]["supported"] == [STATELESS]
    # methods the stateless era removed
    r = http.post("/mcp/fault", headers=_stateless_headers("ping"), json=_stateless("ping"))
    assert r.status_code == 404 and r.json()["error"]["code"] == -32601
    # no sessions: GET is not allowed
    r = http.get(
        "/mcp/fault", headers={"Accept": "text/event-stream", "MCP-Protocol-Version": STATELESS}
    )
    assert r.status_code == 405


def test_stateless_disconnect_cancels_upstream(gw: Gateway) -> None:
    before = len(_stats(gw, "hs")["cancelled"])
    msg = _stateless("tools/call", {"name": "hang"}, id_=77)

    async def give_up_once_upstream() -> None:
        async with httpx.AsyncClient(base_url=gw.url) as http, anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: http.post(
                    "/mcp/hs", headers=_stateless_headers("tools/call", "hang"), json=msg
                )
            )
            await anyio.to_thread.run_sync(
                lambda: gw.wait_for("hs", lambda v: v["instances"][0]["in_flight"] == 1)
            )
            tg.cancel_scope.cancel()  # the connection closes with the request unanswered

    anyio.run(give_up_once_upstream)
    deadline = time.monotonic() + 10
    while len(_stats(gw, "hs")["cancelled"]) == before:
        assert time.monotonic() < deadline, "closing the request did not cancel it upstream"
        time.sleep(0.05)


# -- requests from the server to the client -----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_server_requests_reach_the_client_that_caused_them(gw: Gateway, mode: str) -> None:
    """Handshake-era clients are sent the request on their stream; stateless clients get an
    input_required result and retry with the answer (the SDK drives that loop)."""
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="a reply"), model="m"
        )

    async def roots(context: Any) -> Any:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri="file:///work", name="work")])

    async def main() -> None:
        async with Client(
            f"{gw.url}/mcp", mode=mode, sampling_callback=sampling, list_roots_callback=roots
        ) as c:
            r = await c.call_tool("hs__ask_sampling", {})
            assert "a reply" in _texts(r)[0]
            r = await c.call_tool("hs__ask_roots", {})
            assert "file:///work" in _texts(r)[0]
        # A client that declared no sampling: the server is told so, by name.
        async with Client(f"{gw.url}/mcp/hs", mode=mode) as c:
            r = await c.call_tool("ask_sampling", {})
            error = json.loads(_texts(r)[0])
            assert error["code"] == -32021 and "did not declare" in error["message"]
            r = await c.call_tool("ask_roots", {})
            assert json.loads(_texts(r)[0]) == {"roots": []}

    anyio.run(main)
    assert asked == ["sampling", "roots"]


def test_input_required_round_trip_and_tampered_state(gw: Gateway) -> None:
    envelope = {**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "ask_sampling", "arguments": {}, "_meta": envelope},
    }
    headers = _stateless_headers("tools/call", "ask_sampling")
    first = gw.http.post("/mcp/hs", headers=headers, json=call).json()["result"]
    assert first["resultType"] == "input_required"
    [(key, question)] = first["inputRequests"].items()
    assert question["method"] == "sampling/createMessage"
    state = first["requestState"]

    retry = json.loads(json.dumps(call))
    retry["id"] = 2
    retry["params"]["requestState"] = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    retry["params"]["inputResponses"] = {
        key: {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}
    }
    r = gw.http.post("/mcp/hs", headers=headers, json=retry)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32602

    retry["params"]["requestState"] = state
    other = {**retry, "params": {**retry["params"], "name": "echo"}}
    r = gw.http.post("/mcp/hs", headers=_stateless_headers("tools/call", "echo"), json=other)
    assert r.status_code == 400 and "different request" in r.json()["error"]["message"]

    done = gw.http.post("/mcp/hs", headers=headers, json=retry).json()
    assert done["id"] == 2 and done["result"]["resultType"] == "complete"
    assert '"42"' in done["result"]["content"][0]["text"]
    # a state is good for one completed call only
    r = gw.http.post("/mcp/hs", headers=headers, json={**retry, "id": 3})
    assert r.status_code == 400


# -- the HTTP+SSE transport of 2024-11-05 --------------------------------------------------------


def test_http_sse_transport_with_the_sdk_client(gw: Gateway) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def main() -> None:
        async with Client(sse_client(f"{gw.url}/sse/fault"), mode="legacy") as c:
            assert _texts(await c.call_tool("echo", {"text": "old"})) == ["old"]
            r = await c.call_tool("progress", {"steps": 2}, progress_callback=on_progress)
            assert _texts(r) == ["2 steps"]
        async with Client(sse_client(f"{gw.url}/sse"), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"fault__echo", "hs__echo"} <= names

    anyio.run(main)
    assert seen == [1, 2]
    r = gw.http.post("/messages?session_id=nope", json={"jsonrpc": "2.0", "method": "x"})
    assert r.status_code == 404
    assert gw.http.get("/sse/nowhere").status_code == 404


# -- sharing modes --------------------------------------------------------------------------------


def test_sticky_sessions_stay_on_one_instance_and_end_with_it(tmp_path: Path) -> None:
    policy = '[servers.s]\ninstances = 3\nmode = "sticky"\nstrategy = "round_robin"\n'

    with run_gateway(tmp_path, {"s": fault_server()}, policy) as gw:

        def pid_call(h: dict[str, str], id_: int) -> httpx.Response:
            msg = {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": "pid"}}
            return gw.http.post("/mcp/s", headers=h, json=msg)

        gw.wait_for("s", lambda v: all(i["state"] == "healthy" for i in v["instances"]))
        sessions = []
        for _ in range(3):
            sid = _initialize(gw.http, "/mcp/s")
            sessions.append(
                _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
            )
        pids = []
        for h in sessions:
            seen = {pid_call(h, i).json()["result"]["content"][0]["text"] for i in range(8)}
            assert len(seen) == 1, seen  # every call of a session on one instance
            pids.append(int(seen.pop()))
        assert len(set(pids)) == 3  # round robin spread the sessions

        # Stateless requests hold no state and spread freely.
        msg = _stateless("tools/call", {"name": "pid"})
        spread = {
            gw.http.post(
                "/mcp/s", headers=_stateless_headers("tools/call", "pid"), json=msg
            ).json()["result"]["content"][0]["text"]
            for _ in range(9)
        }
        assert len(spread) > 1

        os.kill(pids[0], signal.SIGKILL)
        r = pid_call(sessions[0], 99)
        assert r.status_code == 404, r.text  # the client must start a new session
        assert "start a new session" in r.json()["error"]["message"]
        assert pid_call(sessions[0], 100).status_code == 404  # the session is gone
        assert pid_call(sessions[1], 101).status_code == 200  # other sessions are not touched


def test_dedicated_mode_gives_each_session_its_own_process(tmp_path: Path) -> None:
    policy = '[servers.s]\nmode = "dedicated"\ninstances = 1\nmax_dedicated = 2\n'

    async def roots(context: Any) -> Any:
        return types.ListRootsResult(roots=[types.Root(uri="file:///mine", name="mine")])

    async def session_pids(gw: Gateway) -> tuple[int, int, str]:
        async with (
            Client(f"{gw.url}/mcp/s", mode="legacy", list_roots_callback=roots) as a,
            Client(f"{gw.url}/mcp/s", mode="legacy") as b,
        ):
            pa = {_texts(await a.call_tool("pid", {}))[0] for _ in range(5)}
            pb = {_texts(await b.call_tool("pid", {}))[0] for _ in range(5)}
            assert len(pa) == 1 and len(pb) == 1 and pa != pb
            view = await anyio.to_thread.run_sync(lambda: gw.server("s"))
            dedicated = [i for i in view["instances"] if i.get("dedicated")]
            assert sorted(str(i["pid"]) for i in dedicated) == sorted(pa | pb)
            # Its own process: a question asked while another call of the session is in
            # flight still reaches this session's client (on its GET stream).
            mine = int(next(iter(pa)))

            def sleeping(v: dict[str, Any]) -> bool:
                return any(i["pid"] == mine and i["in_flight"] == 1 for i in v["instances"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(a.call_tool, "sleep", {"seconds": 1.0})
                await anyio.to_thread.run_sync(lambda: gw.wait_for("s", sleeping, timeout=10))
                asked = _texts(await a.call_tool("ask_roots", {}))[0]
            assert "file:///mine" in asked
            return int(pa.pop()), int(pb.pop()), asked

    with run_gateway(tmp_path, {"s": fault_server()}, policy) as gw:
        gw.wait_for("s", lambda v: v["state"] == "healthy")
        spare = gw.instances("s")[0]["pid"]
        pa, pb, _ = anyio.run(session_pids, gw)
        assert spare in (pa, pb)  # the warm spare went to the first session
        # The sessions ended (the SDK client DELETEs on exit): their processes are gone.
        deadline = time.monotonic() + 15
        while _running(pa) or _running(pb):
            assert time.monotonic() < deadline, "dedicated processes outlived their sessions"
            time.sleep(0.1)

        # A killed dedicated process ends its session with 404.
        sid = _initialize(gw.http, "/mcp/s")
        h = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pid"}}
        pid = int(
            gw.http.post("/mcp/s", headers=h, json=msg).json()["result"]["content"][0]["text"]
        )
        os.kill(pid, signal.SIGKILL)
        gw.wait_for("s", lambda v: pid not in [i["pid"] for i in v["instances"]], timeout=10)
        assert gw.http.post("/mcp/s", headers=h, json=msg).status_code == 404

        # At max_dedicated sessions, the next one is refused with 503 and a reason.
        held = []
        for _ in range(2):
            sid = _initialize(gw.http, "/mcp/s")
            hh = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
            assert gw.http.post("/mcp/s", headers=hh, json=msg).status_code == 200
            held.append(hh)
        sid = _initialize(gw.http, "/mcp/s")
        hh = _headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        r = gw.http.post("/mcp/s", headers=hh, json=msg).json()
        assert (
            r["error"]["data"]["reason"] == "overloaded"
            and "max_dedicated" in r["error"]["message"]
        )


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_a_stateless_server_announcing_changes_only_on_subscriptions(tmp_path: Path) -> None:
    """The gateway holds a subscriptions/listen stream open to each stateless instance."""
    with run_gateway(tmp_path, {"s": fault_server("--era", "stateless", "--listen-only")}) as gw:
        gw.wait_for("s", lambda v: v["state"] == "healthy")
        assert gw.call("s", "add_tool", {"name": "late"}).status_code == 200
        view = gw.wait_for("s", lambda v: "late" in v["tools"])
        assert view["instances"][0]["era"] == "stateless"
        # The open subscription does not count as a call in flight.
        assert view["instances"][0]["in_flight"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_sdk_client_cancelling_a_call_cancels_it_upstream(gw: Gateway, mode: str) -> None:
    before = len(_stats(gw, "hs")["cancelled"])

    async def main() -> None:
        async with Client(f"{gw.url}/mcp/hs", mode=mode) as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(c.call_tool, "hang", {})
                await anyio.to_thread.run_sync(
                    lambda: gw.wait_for("hs", lambda v: v["instances"][0]["in_flight"] == 1)
                )
                tg.cancel_scope.cancel()  # the client gives up on the call
            assert _texts(await c.call_tool("echo", {"text": "still here"})) == ["still here"]

    anyio.run(main)
    deadline = time.monotonic() + 10
    while len(_stats(gw, "hs")["cancelled"]) == before:
        assert time.monotonic() < deadline, f"{mode}: the server never heard of the cancellation"
        time.sleep(0.05)
