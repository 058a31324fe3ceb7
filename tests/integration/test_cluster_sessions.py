"""Handshake-era sessions in a cluster of real gateways on one real redis-server: a session
lives on the node that opened it and works through any node (POST, progress, the server's
questions, the GET stream and its resumption, DELETE, the HTTP+SSE transport's /messages),
as the original caller only; a session of a node that left the cluster, or of a node that
never was, is not found (404)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

from meshgate.router.cluster import session_tag
from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server
from tests.integration.test_cluster import (
    POLICY,
    SECRET,
    make_key,
    messages,
    node,
    node_ids,
    sees,
    text,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

VERSION = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


def initialize(gw: Gateway, path: str, headers: Mapping[str, str] | None = None) -> str:
    """A new 2025-11-25 session at `path` on `gw`, initialized; its id."""
    r = gw.http.post(
        path,
        headers={"Accept": ACCEPT, **(headers or {})},
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": VERSION,
                "capabilities": {"sampling": {}},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
    )
    assert r.status_code == 200, r.text
    session: str = r.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    done = post(gw, path, session, initialized, headers)
    assert done.status_code == 202, done.text
    return session


def session_headers(session: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "Accept": ACCEPT,
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": VERSION,
        **(extra or {}),
    }


def post(
    gw: Gateway,
    path: str,
    session: str,
    msg: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    return gw.http.post(path, headers=session_headers(session, headers), json=dict(msg))


def call(name: str, arguments: Mapping[str, Any], id_: int = 1, **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": dict(arguments)}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


def final(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    last: dict[str, Any] = messages(r)[-1]
    assert "result" in last, last
    out: dict[str, Any] = last["result"]
    return out


def events(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(event id, message) of each event of an SSE stream, as it comes."""
    event_id: str | None = None
    for line in lines:
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:") and line[5:].strip():
            yield event_id, json.loads(line[5:])


def test_a_session_opened_on_a_works_through_b(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}) as b,
    ):
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha"))
        path = "/mcp/alpha"
        session = initialize(a, path)
        assert session.startswith(session_tag("node-a") + ".")
        assert all(0x21 <= ord(c) <= 0x7E for c in session)
        a_pid = a.server("alpha")["instances"][0]["pid"]

        tools = final(post(b, path, session, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        assert {"echo", "progress", "add_tool"} <= {t["name"] for t in tools["tools"]}
        assert text(final(post(b, path, session, call("pid", {})))) == str(a_pid)

        # progress comes back through B as it happens, on the client's token
        r = post(b, path, session, call("progress", {"steps": 3}, progressToken="p"))
        assert r.headers["content-type"].startswith("text/event-stream")
        progress = [m for m in messages(r) if m.get("method") == "notifications/progress"]
        assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
        assert text(messages(r)[-1]["result"]) == "3 steps"

        # the server's question reaches the client through B; its answer, posted to B, reaches
        # the call waiting on A
        with b.http.stream(
            "POST", path, headers=session_headers(session), json=call("ask_sampling", {}, 2)
        ) as stream:
            assert stream.status_code == 200
            seen = events(stream.iter_lines())
            _, question = next(seen)
            assert question["method"] == "sampling/createMessage", question
            answer = {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}
            with httpx.Client(base_url=b.url, timeout=30) as other:
                r = other.post(
                    path,
                    headers=session_headers(session),
                    json={"jsonrpc": "2.0", "id": question["id"], "result": answer},
                )
                assert r.status_code == 202, r.text
            _, reply = next(seen)
            assert '"42"' in text(reply["result"]), reply

        # the GET stream through B receives A's server's notification, and resumes through B
        # from Last-Event-ID
        with b.http.stream("GET", path, headers=session_headers(session)) as stream:
            assert stream.status_code == 200, stream.read()
            with httpx.Client(base_url=b.url, timeout=30) as other:
                r = other.post(
                    path, headers=session_headers(session), json=call("add_tool", {"name": "x1"}, 3)
                )
                assert text(final(r)) == "added"
            first_id, note = next(events(stream.iter_lines()))
            assert note["method"] == "notifications/tools/list_changed"
        assert first_id is not None
        r = post(a, path, session, call("add_tool", {"name": "x2"}, 4))
        assert text(final(r)) == "added"
        with b.http.stream(
            "GET", path, headers=session_headers(session, {"Last-Event-ID": first_id})
        ) as stream:
            assert stream.status_code == 200
            next_id, note = next(events(stream.iter_lines()))
            assert note["method"] == "notifications/tools/list_changed"
            assert next_id is not None and next_id != first_id

        # ids that name no node of the cluster, or another target, are not found
        for bad in (
            "0123456789." + session.partition(".")[2],
            "no-tag-at-all",
            session_tag("node-c") + ".x",
        ):
            r = post(b, path, bad, call("echo", {"text": "x"}))
            assert r.status_code == 404, (bad, r.text)
            assert "initialize again" in r.json()["error"]["message"]
        assert post(b, "/mcp", session, call("alpha__echo", {"text": "x"})).status_code == 404
        # a deadline that is not one is refused where the client came in
        for bad_timeout in ("soon", "-1"):
            h = {"X-Meshgate-Timeout": bad_timeout}
            r = post(b, path, session, call("echo", {"text": "x"}), h)
            assert r.status_code == 400, r.text
            assert "x-meshgate-timeout" in r.json()["error"]["message"].lower()
        # the deadline left goes with the relayed request: A's call ends within it
        r = post(b, path, session, call("sleep", {"seconds": 5}), {"X-Meshgate-Timeout": "0.5"})
        assert "error" in messages(r)[-1], r.text

        # DELETE through B ends the session on A
        r = b.http.delete(path, headers=session_headers(session))
        assert r.status_code == 204, r.text
        for gw in (a, b):
            assert post(gw, path, session, call("echo", {"text": "x"})).status_code == 404

        # the HTTP+SSE transport: a stream opened on A, its messages posted to B
        with a.http.stream("GET", "/sse/alpha", headers={"Accept": "text/event-stream"}) as sse:
            lines = sse.iter_lines()
            endpoint = next(line[5:].strip() for line in lines if line.startswith("data:"))
            assert endpoint.startswith("/messages?session_id=" + session_tag("node-a") + ".")
            r = b.http.post(endpoint, json=call("echo", {"text": "legacy"}, 7))
            assert r.status_code == 202, r.text
            _, reply = next(events(lines))
            assert reply["id"] == 7 and text(reply["result"]) == "legacy"
        r = b.http.post("/messages?session_id=0123456789.x", json=call("echo", {}, 8))
        assert r.status_code == 404


class RoundRobin(httpx2.AsyncBaseTransport):
    """An in-test load balancer: each request goes to the next of the nodes' addresses."""

    def __init__(self, urls: list[str]) -> None:
        self.targets = itertools.cycle([httpx2.URL(u) for u in urls])
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = next(self.targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        self.sent.append(f"{request.method} {target.port}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_the_python_sdk_through_a_round_robin_pair(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"alpha": fault_server()}) as b,
    ):
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha"))
        wait_until("A sees B", lambda: sees(a, "node-b", "alpha"))
        balancer = RoundRobin([a.url, b.url])
        asked: list[str] = []

        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
            asked.append("sampling")
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text="yes"), model="m"
            )

        async def main() -> None:
            http = httpx2.AsyncClient(transport=balancer, timeout=httpx2.Timeout(30, read=60))
            transport = streamable_http_client(f"{a.url}/mcp/alpha", http_client=http)
            async with Client(transport, mode="legacy", sampling_callback=sampling) as c:
                tools = {t.name for t in (await c.list_tools()).tools}
                assert {"echo", "pid"} <= tools
                pids = set()
                for i in range(6):
                    r = await c.call_tool("echo", {"text": f"n{i}"})
                    assert r.content[0].text == f"n{i}"  # type: ignore[union-attr]
                    r = await c.call_tool("pid", {})
                    pids.add(r.content[0].text)  # type: ignore[union-attr]
                r = await c.call_tool("ask_sampling", {})
                assert "yes" in r.content[0].text  # type: ignore[union-attr]
                # every call ran on the session's node, whichever node it reached
                assert len(pids) == 1

        anyio.run(main)
        assert asked == ["sampling"]
        ports = {entry.split()[1] for entry in balancer.sent}
        assert len(ports) == 2 and len(balancer.sent) >= 10, balancer.sent


def test_a_session_is_the_original_callers_on_every_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    env = {"MESHGATE_CLUSTER_SECRET": SECRET}
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}, POLICY, env) as a,
        node(tmp_path, "node-b", url, {"alpha": fault_server()}, POLICY, env) as b,
    ):
        ops = {"authorization": f"Bearer {make_key(tmp_path / 'node-a', url, 'ops', 'admin')}"}
        bot = {"authorization": f"Bearer {make_key(tmp_path / 'node-a', url, 'bot', 'reader')}"}
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha", ops))
        session = initialize(a, "/mcp/alpha", ops)
        echo = call("echo", {"text": "mine"})
        assert text(final(post(b, "/mcp/alpha", session, echo, ops))) == "mine"
        # another principal's token, on B as on A: not found
        for gw in (b, a):
            r = post(gw, "/mcp/alpha", session, echo, bot)
            assert r.status_code == 404, r.text
            r = gw.http.get("/mcp/alpha", headers=session_headers(session, bot))
            assert r.status_code == 404, r.text
            r = gw.http.delete("/mcp/alpha", headers=session_headers(session, bot))
            assert r.status_code == 404, r.text
        # no credential: refused where the client came in
        r = post(b, "/mcp/alpha", session, echo)
        assert r.status_code == 401, r.text
        # the caller's own roles still decide on A
        r = post(b, "/mcp/alpha", session, call("pid", {}), ops)
        assert final(r)["content"], r.text
        # a client cannot pass itself off as a node that relayed it
        r = post(b, "/mcp/alpha", session, echo, {**ops, "x-meshgate-hops": "1"})
        assert r.status_code == 404, r.text
        assert text(final(post(b, "/mcp/alpha", session, echo, ops))) == "mine"


def test_a_dead_nodes_sessions_are_not_found_once_its_lease_ends(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"alpha": fault_server()}) as b,
    ):
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha"))
        session = initialize(a, "/mcp/alpha")
        echo = call("echo", {"text": "x"})
        assert text(final(post(b, "/mcp/alpha", session, echo))) == "x"
        # a GET stream through B ends when A dies
        opened, ended = threading.Event(), threading.Event()

        def follow() -> None:
            with httpx.Client(base_url=b.url, timeout=30) as other:
                with other.stream("GET", "/mcp/alpha", headers=session_headers(session)) as s:
                    if s.status_code == 200:  # A answered: its stream is open
                        opened.set()
                    for _ in s.iter_lines():
                        pass
            ended.set()

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        assert opened.wait(20), "the relayed stream did not open"
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(timeout=10)
        assert ended.wait(20), "the relayed stream did not end with its node"
        started = time.monotonic()
        r = post(b, "/mcp/alpha", session, echo)
        if "node-a" in node_ids(b):  # still in the membership: unreachable, not yet gone
            assert r.status_code in (503, 404), r.text
            if r.status_code == 503:
                assert "retry-after" in r.headers
        wait_until("A gone from /nodes", lambda: node_ids(b) == ["node-b"], timeout=15)
        assert time.monotonic() - started < 15
        r = post(b, "/mcp/alpha", session, echo)
        assert r.status_code == 404, r.text
        # the client starts anew, on B
        fresh = initialize(b, "/mcp/alpha")
        assert fresh.startswith(session_tag("node-b") + ".")
        assert text(final(post(b, "/mcp/alpha", fresh, echo))) == "x"
