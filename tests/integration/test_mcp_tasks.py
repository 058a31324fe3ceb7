"""MCP tasks on /mcp: tool calls run as queue tasks, for 2025-11-25 clients (experimental tasks)
and 2026-07-28 clients (the tasks extension), with the queue's durability.

The conformance suite's tasks scenarios run in tests/conformance; these tests cover what it
does not: the 2025-11-25 methods, cancellation reaching the server, the REST view of the same
task, and a task surviving a SIGKILL of the gateway on both queue backends.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, run_gateway
from tests.integration.test_mcp_http import (
    _headers,
    _initialize,
    _sse_messages,
    _stats,
)

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EXTENSION = "io.modelcontextprotocol/tasks"
RELATED = "io.modelcontextprotocol/related-task"
POLICY = """
[servers.fault]
task_support = "optional"
[servers.fault.tool_task_support]
echo = "forbidden"
sleep = "required"
"""


def _answer(r: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer, from JSON or an SSE stream (a stateless error may come as 400)."""
    assert r.status_code == 200 or (r.status_code == 400 and "error" in r.json()), r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        replies = [m for m in _sse_messages(r.text) if "id" in m]
        assert len(replies) == 1, r.text
        return replies[0]
    body: dict[str, Any] = r.json()
    return body


class Session:
    """A 2025-11-25 client session on /mcp/fault."""

    def __init__(self, gw: Gateway) -> None:
        self.http = gw.http
        self.id = _initialize(gw.http, "/mcp/fault")
        self.next = 0

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next += 1
        headers = _headers(**{"Mcp-Session-Id": self.id, "MCP-Protocol-Version": "2025-11-25"})
        body = {"jsonrpc": "2.0", "id": self.next, "method": method, "params": params or {}}
        return _answer(self.http.post("/mcp/fault", headers=headers, json=body))


def _stateless(
    http: httpx.Client,
    method: str,
    params: dict[str, Any],
    *,
    declared: bool = True,
    caps: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if caps is None:
        caps = {"extensions": {EXTENSION: {}}} if declared else {}
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": caps,
    }
    headers = _headers(**{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method})
    name = params.get("name") or params.get("taskId")
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    return _answer(http.post("/mcp/fault", headers=headers, json=body))


def test_2025_11_25_clients_run_tool_calls_as_tasks(tmp_path: Path, queue: dict[str, str]) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY, env=queue) as gw:
        s = Session(gw)
        init = _answer(
            gw.http.post(
                "/mcp/fault",
                headers=_headers(),
                json={
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
                },
            )
        )
        tasks_caps = init["result"]["capabilities"]["tasks"]
        assert tasks_caps == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        tools = {t["name"]: t for t in s.rpc("tools/list")["result"]["tools"]}
        assert "execution" not in tools["echo"]
        assert tools["sleep"]["execution"] == {"taskSupport": "required"}
        assert tools["hang"]["execution"] == {"taskSupport": "optional"}

        sleep = {"name": "sleep", "arguments": {"seconds": 0.3}}
        created = s.rpc("tools/call", {**sleep, "task": {"ttl": 60000}})["result"]["task"]
        assert created["status"] == "working" and created["pollInterval"] > 0
        assert RFC3339_MS.fullmatch(created["createdAt"]) and isinstance(created["ttl"], int)
        task_id = created["taskId"]
        assert s.rpc("tasks/get", {"taskId": task_id})["result"]["taskId"] == task_id
        result = s.rpc("tasks/result", {"taskId": task_id})["result"]  # waits for the end
        assert result["content"][0]["text"] == "slept"
        assert result["_meta"][RELATED] == {"taskId": task_id}
        done = s.rpc("tasks/get", {"taskId": task_id})["result"]
        assert done["status"] == "completed"
        rest = gw.get(f"{API}/task/{task_id}").json()
        assert rest["status"] == "succeeded"  # one queue
        # and one clock: the REST view shows the task's times as MCP does
        assert rest["created_at"] == created["createdAt"] == done["createdAt"]
        assert rest["finished_at"] == done["lastUpdatedAt"]

        assert s.rpc("tools/call", sleep)["error"]["code"] == -32601  # required: only a task
        echo = {"name": "echo", "arguments": {"text": "x"}, "task": {}}
        assert s.rpc("tools/call", echo)["error"]["code"] == -32601  # forbidden
        assert s.rpc("tools/call", {**echo, "task": None})["result"]["content"][0]["text"] == "x"

        hang = s.rpc("tools/call", {"name": "hang", "task": {}})["result"]["task"]["taskId"]
        deadline = time.monotonic() + 10
        while gw.get(f"{API}/task/{hang}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = s.rpc("tasks/cancel", {"taskId": hang})["result"]
        assert cancelled["taskId"] == hang and cancelled["status"] == "cancelled"
        while not _stats(gw, "fault")["cancelled"]:  # the server heard of it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert s.rpc("tasks/cancel", {"taskId": hang})["error"]["code"] == -32602  # final
        assert s.rpc("tasks/get", {"taskId": "t-nope"})["error"]["code"] == -32602
        assert s.rpc("tasks/get", {})["error"]["code"] == -32602

        failing = s.rpc("tools/call", {"name": "fail", "task": {}})["result"]["task"]["taskId"]
        error = s.rpc("tasks/result", {"taskId": failing})["error"]
        assert error["code"] == -32603 and "injected failure" in error["message"]
        failed = s.rpc("tasks/get", {"taskId": failing})["result"]
        assert failed["status"] == "failed" and "injected failure" in failed["statusMessage"]
        tool_error = s.rpc("tools/call", {"name": "tool_error", "task": {}})["result"]["task"]
        result = s.rpc("tasks/result", {"taskId": tool_error["taskId"]})["result"]
        assert result["isError"] is True  # the tool's own error: the task is `failed` in 2025
        assert s.rpc("tasks/get", tool_error)["result"]["status"] == "failed"

        listed = s.rpc("tasks/list")["result"]  # the session's own tasks
        assert {t["taskId"] for t in listed["tasks"]} == {
            task_id,
            hang,
            failing,
            tool_error["taskId"],
        }
        assert "nextCursor" not in listed
        assert s.rpc("tasks/list", {"cursor": "%%"})["error"]["code"] == -32602
        assert Session(gw).rpc("tasks/list")["result"] == {"tasks": []}  # not another's


def test_older_clients_see_no_tasks(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as gw:
        session = _initialize(gw.http, "/mcp/fault", "2025-06-18")
        headers = _headers(**{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"})

        def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            return _answer(gw.http.post("/mcp/fault", headers=headers, json=body))

        tools = rpc("tools/list", {})["result"]["tools"]
        assert all("execution" not in t for t in tools)
        pid = rpc("tools/call", {"name": "pid", "task": {}})["result"]  # params.task ignored
        assert pid["content"][0]["text"].isdigit()
        assert rpc("tools/call", {"name": "sleep"})["error"]["code"] == -32601
        assert rpc("tasks/get", {"taskId": "x"})["error"]["code"] == -32601


def test_2026_07_28_tasks_are_as_durable_as_the_queue(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    env = {"MESHGATE_DATA_DIR": str(tmp_path / "state"), **queue}
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY, env=env) as gw:
        discover = _stateless(gw.http, "server/discover", {})["result"]
        assert discover["capabilities"]["extensions"] == {EXTENSION: {}}
        assert "tasks" not in discover["capabilities"]
        call = {"name": "sleep", "arguments": {"seconds": 1.0}}
        created = _stateless(gw.http, "tools/call", call)["result"]
        assert created["resultType"] == "task" and created["status"] == "working"
        assert isinstance(created["ttlMs"], int) and "task" not in created
        task_id = created["taskId"]
        got = _stateless(gw.http, "tasks/get", {"taskId": task_id})["result"]
        assert got["resultType"] == "complete" and got["status"] == "working"
        undeclared = _stateless(gw.http, "tools/call", call, declared=False)
        assert undeclared["error"]["code"] == -32021
        assert undeclared["error"]["data"] == {
            "requiredCapabilities": {"extensions": {EXTENSION: {}}}
        }
        plain = _stateless(gw.http, "tools/call", {"name": "pid"}, declared=False)["result"]
        assert plain["resultType"] == "complete" and plain["content"][0]["text"].isdigit()
        gw.process.stop(signal.SIGKILL)
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY, env=env) as gw:
        deadline = time.monotonic() + 30
        while (got := _stateless(gw.http, "tasks/get", {"taskId": task_id})["result"])[
            "status"
        ] == "working":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert got["status"] == "completed" and got["result"]["content"][0]["text"] == "slept"
        ack = _stateless(gw.http, "tasks/cancel", {"taskId": task_id})["result"]
        assert ack == {"resultType": "complete", "_meta": ack["_meta"]}  # final: still an ack
        missing = _stateless(gw.http, "tasks/get", {"taskId": "t-nope"})
        assert missing["error"]["code"] == -32602
        bad = _stateless(gw.http, "tasks/update", {"taskId": task_id, "inputResponses": [1]})
        assert bad["error"]["code"] == -32602 and "inputResponses" in bad["error"]["message"]
        unknown = _stateless(gw.http, "tasks/update", {"taskId": "t-nope", "inputResponses": {}})
        assert unknown["error"]["code"] == -32602
        hidden = _stateless(gw.http, "tasks/get", {"taskId": task_id}, declared=False)
        assert hidden["error"]["code"] == -32021


SAMPLED = {
    "role": "assistant",
    "content": {"type": "text", "text": "from the client"},
    "model": "m",
}


def _until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_a_tasks_questions_reach_its_client_on_any_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_QUEUE": redis_server.url}
    servers = {"fault": fault_server()}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    caps: dict[str, Any] = {"sampling": {}, "extensions": {EXTENSION: {}}}
    with (
        run_gateway(tmp_path / "a", servers, POLICY, env=env, node="a") as a,
        run_gateway(tmp_path / "b", servers, POLICY, env=env, node="b") as b,
    ):
        created = _stateless(a.http, "tools/call", {"name": "ask_sampling"}, caps=caps)["result"]
        task_id = created["taskId"]

        def asking() -> dict[str, Any] | None:
            got = _stateless(b.http, "tasks/get", {"taskId": task_id}, caps=caps)["result"]
            return got if got["status"] == "input_required" else None

        got = _until(asking)  # seen from the other node
        (key, question), *more = got["inputRequests"].items()
        assert not more and question["method"] == "sampling/createMessage"
        assert question["params"]["maxTokens"] == 10
        ack = _stateless(
            b.http,
            "tasks/update",
            {"taskId": task_id, "inputResponses": {key: SAMPLED, "unknown-key": {}}},
            caps=caps,
        )["result"]
        assert ack["resultType"] == "complete"

        def done() -> dict[str, Any] | None:
            got = _stateless(a.http, "tasks/get", {"taskId": task_id}, caps=caps)["result"]
            return got if got["status"] == "completed" else None

        assert "from the client" in _until(done)["result"]["content"][0]["text"]

        # A client that cannot answer sampling: the server hears so at once.
        plain: dict[str, Any] = {"extensions": {EXTENSION: {}}}
        created = _stateless(a.http, "tools/call", {"name": "ask_sampling"}, caps=plain)
        task_id = created["result"]["taskId"]
        finished = _until(done)
        assert (
            "did not declare the 'sampling' capability" in finished["result"]["content"][0]["text"]
        )


def test_2025_11_25_tasks_result_asks_the_client_on_its_stream(tmp_path: Path) -> None:
    with run_gateway(
        tmp_path, {"hs": fault_server("--era", "handshake")}, POLICY.replace("fault", "hs")
    ) as gw:
        gw.wait_for("hs", lambda v: v["state"] == "healthy")
        r = gw.http.post(
            "/mcp/hs",
            headers=_headers(),
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}}},
            },
        )
        headers = _headers(
            **{"Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        )
        call = {"name": "ask_sampling", "task": {}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
        task_id = _answer(gw.http.post("/mcp/hs", headers=headers, json=body))["result"]["task"][
            "taskId"
        ]
        asked = []
        final: dict[str, Any] = {}
        body = {"jsonrpc": "2.0", "id": 2, "method": "tasks/result", "params": {"taskId": task_id}}
        with httpx.Client(base_url=str(gw.http.base_url), timeout=30) as other:
            with gw.http.stream("POST", "/mcp/hs", headers=headers, json=body) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:") or not line[5:].strip():
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("method") == "sampling/createMessage":
                        asked.append(msg)
                        answer = {"jsonrpc": "2.0", "id": msg["id"], "result": SAMPLED}
                        assert (
                            other.post("/mcp/hs", headers=headers, json=answer).status_code == 202
                        )
                    elif msg.get("id") == 2:
                        final = msg
                        break
        assert len(asked) == 1 and asked[0]["params"]["_meta"][RELATED] == {"taskId": task_id}
        assert "from the client" in final["result"]["content"][0]["text"]
        assert final["result"]["_meta"][RELATED] == {"taskId": task_id}


def test_a_2025_11_25_session_hears_when_its_task_ends(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as gw:
        s = Session(gw)
        heard: list[dict[str, Any]] = []
        opened = threading.Event()
        headers = _headers(**{"Mcp-Session-Id": s.id, "MCP-Protocol-Version": "2025-11-25"})
        headers["Accept"] = "text/event-stream"

        def listen() -> None:
            with httpx.Client(base_url=str(gw.http.base_url), timeout=30) as client:
                with client.stream("GET", "/mcp/fault", headers=headers) as stream:
                    # Answered: the stream follows the session from the events after this point.
                    opened.set()
                    for line in stream.iter_lines():
                        if line.startswith("data:") and line[5:].strip():
                            heard.append(json.loads(line[5:]))
                            if heard[-1].get("method") == "notifications/tasks/status":
                                return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert opened.wait(10), "the GET stream never opened"
        call = {"name": "sleep", "arguments": {"seconds": 0.2}, "task": {}}
        task_id = s.rpc("tools/call", call)["result"]["task"]["taskId"]
        listener.join(20)
        notes = [m for m in heard if m.get("method") == "notifications/tasks/status"]
        assert notes, heard
        assert notes[0]["params"]["taskId"] == task_id
        assert notes[0]["params"]["status"] == "completed"
        assert RELATED not in notes[0]["params"].get("_meta", {})
