"""A cluster of real gateways on one real redis-server: each node announces itself, and a call
for a server only another node runs is forwarded there (REST, /mcp in both eras, the aggregated
catalog), as the original caller, signed with the cluster secret; a dead node is dropped; a loop
of forwards ends with 508."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from meshgate.security import Principal
from meshgate.security.nodes import NodeCredentials
from meshgate.testing.gateway import create_key, start_gateway
from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
STATELESS = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
}
SECRET = "a-cluster-secret-for-tests-only"
CONFORMANCE = {"command": sys.executable, "args": ["-m", "meshgate.testing.conformance_server"]}


@contextmanager
def node(
    tmp: Path,
    name: str,
    redis_url: str,
    servers: Mapping[str, Mapping[str, Any]],
    policy: str = "",
    env: Mapping[str, str] | None = None,
) -> Iterator[Gateway]:
    """One gateway of the cluster, with its own node id and data dir."""
    workdir = tmp / name
    workdir.mkdir()
    full_env = {"MESHGATE_REGISTRY_LEASE_S": "3", **(env or {})}
    with run_gateway(
        workdir, servers, policy, env=full_env, node=name, args=["--registry", redis_url]
    ) as gw:
        yield gw


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def node_ids(gw: Gateway, headers: Mapping[str, str] | None = None) -> list[str]:
    r = gw.get(f"{API}/nodes", headers=dict(headers or {}))
    assert r.status_code == 200, r.text
    return [n["id"] for n in r.json()["items"]]


def sees(gw: Gateway, peer: str, server: str, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a node knows a peer and a healthy instance of `server` there."""
    h = dict(headers or {})
    if peer not in node_ids(gw, h):
        return False
    r = gw.get(f"/api/v1/mcp/servers/{server}", headers=h)
    return r.status_code == 200 and any(
        i.get("node") == peer and i["state"] == "healthy" for i in r.json()["instances"]
    )


def rpc(
    gw: Gateway,
    path: str,
    method: str,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """One stateless (2026-07-28) request."""
    h = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": STATELESS,
        "Mcp-Method": method,
        **(headers or {}),
    }
    name = (params or {}).get("name") or (params or {}).get("uri")
    if isinstance(name, str):
        h["Mcp-Name"] = name
    meta = {**ENVELOPE, **dict((params or {}).get("_meta") or {})}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**(params or {}), "_meta": meta},
    }
    return gw.http.post(path, json=body, headers=h)


def messages(r: httpx.Response) -> list[dict[str, Any]]:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return [
            json.loads(line[5:])
            for line in r.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    return [r.json()]


def result(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    final = messages(r)[-1]
    assert "result" in final, final
    out: dict[str, Any] = final["result"]
    return out


def text(res: Mapping[str, Any]) -> str:
    return "".join(c.get("text", "") for c in res["content"])


def test_a_server_only_node_a_runs_is_called_through_node_b(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    a_servers = {"alpha": fault_server(), "conf": CONFORMANCE}
    with (
        node(tmp_path, "node-a", url, a_servers) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}) as b,
    ):
        wait_until("B sees A's servers", lambda: sees(b, "node-a", "alpha"))
        wait_until("B has A's catalog", lambda: "alpha" in b.get("/api/v1/mcp/servers").text)

        # membership: both nodes, each with its servers and URL
        nodes = {n["id"]: n for n in b.get(f"{API}/nodes").json()["items"]}
        assert nodes["node-b"]["self"] and not nodes["node-a"]["self"]
        assert nodes["node-a"]["url"] == a.url
        assert nodes["node-a"]["servers"]["alpha"] == {"healthy": 1, "total": 1}
        assert nodes["node-b"]["servers"] == {"beta": {"healthy": 1, "total": 1}}
        health = b.get(f"{API}/health").json()
        assert {n["id"] for n in health["nodes"]} == {"node-a", "node-b"}

        # REST: the call runs on A's own process
        r = b.call("alpha", "pid")
        assert r.status_code == 200, r.text
        a_pid = a.server("alpha")["instances"][0]["pid"]
        assert text(r.json()) == str(a_pid)
        assert b.call("alpha", "echo", {"text": "via b"}).json()["content"][0]["text"] == "via b"
        assert b.call("alpha", "nope").status_code == 404
        # the caller's deadline holds across the hop
        r = b.call("alpha", "sleep", {"seconds": 5}, timeout_s=0.5)
        assert r.status_code == 504, r.text
        assert "node-a" in r.json()["detail"]
        servers = {s["name"]: s for s in b.get("/api/v1/mcp/servers").json()["items"]}
        assert servers["alpha"]["remote"] is True
        assert [i["node"] for i in servers["alpha"]["instances"]] == ["node-a"]
        assert "echo" in servers["alpha"]["tools"]

        # /mcp, stateless: the aggregate lists A's tools, and every method goes through
        listed = {t["name"] for t in result(rpc(b, "/mcp", "tools/list"))["tools"]}
        assert {"alpha__echo", "conf__test_simple_text", "beta__echo"} <= listed
        res = result(
            rpc(b, "/mcp", "tools/call", {"name": "alpha__echo", "arguments": {"text": "hi"}})
        )
        assert text(res) == "hi"
        prompt = result(rpc(b, "/mcp/conf", "prompts/get", {"name": "test_simple_prompt"}))
        assert prompt["messages"]
        read = result(rpc(b, "/mcp", "resources/read", {"uri": "test://static-text"}))
        assert read["contents"][0]["uri"] == "test://static-text"
        ref = {"type": "ref/prompt", "name": "conf__test_prompt_with_arguments"}
        done = result(
            rpc(
                b,
                "/mcp",
                "completion/complete",
                {"ref": ref, "argument": {"name": "arg1", "value": "x"}},
            )
        )
        assert "values" in done["completion"]
        # progress comes back through the peer, on the client's own token
        r = rpc(
            b,
            "/mcp/alpha",
            "tools/call",
            {"name": "progress", "arguments": {}, "_meta": {"progressToken": "tok"}},
        )
        progress = [m for m in messages(r) if m.get("method") == "notifications/progress"]
        assert progress and all(m["params"]["progressToken"] == "tok" for m in progress)
        assert "result" in messages(r)[-1]

        # a stateless input_required round: the question comes back through B, and the retry
        # with the answer reaches the same call on A
        caps: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
        ask = {"name": "ask_sampling", "arguments": {}, "_meta": caps}
        first = result(rpc(b, "/mcp/alpha", "tools/call", ask))
        assert first["resultType"] == "input_required", first
        [(key, question)] = first["inputRequests"].items()
        assert question["method"] == "sampling/createMessage"
        answer = {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}
        retry = {**ask, "requestState": first["requestState"], "inputResponses": {key: answer}}
        done = result(rpc(b, "/mcp/alpha", "tools/call", retry))
        assert done["resultType"] == "complete" and '"42"' in text(done), done

        # /mcp, handshake era: a session on B calls A's tool
        init = b.http.post(
            "/mcp",
            headers={"Accept": "application/json, text/event-stream"},
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
        )
        session = init.headers["mcp-session-id"]
        h = {
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": session,
            "MCP-Protocol-Version": "2025-11-25",
        }
        b.http.post(
            "/mcp", headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        r = b.http.post(
            "/mcp",
            headers=h,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "alpha__echo", "arguments": {"text": "session"}},
            },
        )
        assert text(result(r)) == "session"
        # B's own server is served by B itself
        assert b.call("beta", "echo", {"text": "own"}).status_code == 200


POLICY = """
[auth]

[roles.reader]
allow = ["mcp:alpha/echo", "mcp:beta/echo", "mesh:discover"]
"""


def make_key(workdir: Path, redis_url: str, name: str, role: str) -> str:
    """A key made on the shared key store (Redis), that every node takes."""
    policy = str(workdir / "meshgate.toml")
    return create_key(
        workdir / "data", name, "--role", role, "--registry", redis_url, "--policy", policy
    )


def test_forwarded_calls_run_as_the_caller_and_need_a_node_signature(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    env = {"MESHGATE_CLUSTER_SECRET": SECRET}
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}, POLICY, env) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}, POLICY, env) as b,
    ):
        admin_key = make_key(tmp_path / "node-a", url, "ops", "admin")
        reader_key = make_key(tmp_path / "node-a", url, "bot", "reader")
        admin = {"authorization": f"Bearer {admin_key}"}
        reader = {"authorization": f"Bearer {reader_key}"}
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha", admin))

        # the reader may echo on A's server through B, not ask for its pid: on B and on A
        r = b.call("alpha", "echo", {"text": "ok"}, headers=reader)
        assert r.status_code == 200, r.text
        for gw in (b, a):
            r = gw.call("alpha", "pid", headers=reader)
            assert r.status_code == 403, r.text
        r = rpc(b, "/mcp", "tools/call", {"name": "alpha__pid", "arguments": {}}, reader)
        assert messages(r)[-1]["error"]["data"]["type"] == "forbidden"
        listed = {t["name"] for t in result(rpc(b, "/mcp", "tools/list", None, reader))["tools"]}
        assert "alpha__echo" in listed and "alpha__pid" not in listed

        # node requests: a good signature runs as the principal it asserts ...
        reader_p = Principal("bot", frozenset({"reader"}))
        good = NodeCredentials(SECRET, "node-b").sign(reader_p, "/mcp/alpha")
        echo = {"name": "echo", "arguments": {"text": "signed"}}
        assert text(result(rpc(a, "/mcp/alpha", "tools/call", echo, good))) == "signed"
        pid = {"name": "pid", "arguments": {}}
        refused = messages(rpc(a, "/mcp/alpha", "tools/call", pid, good))[-1]
        assert refused["error"]["data"]["type"] == "forbidden"
        # ... anything else is 401: another secret, another path, an old time, a part missing,
        # an altered principal; the client's own credential beside it changes nothing
        boss = Principal("boss", frozenset({"admin"}))
        forged = NodeCredentials("not-the-cluster-secret", "node-b").sign(boss, "/mcp/alpha")
        other_path = NodeCredentials(SECRET, "node-b").sign(boss, "/mcp/beta")
        old = NodeCredentials(SECRET, "node-b", clock=lambda: time.time() - 600).sign(
            boss, "/mcp/alpha"
        )
        partial = {k: v for k, v in good.items() if k != "x-meshgate-node-signature"}
        altered = {**good, "x-meshgate-principal": forged["x-meshgate-principal"]}
        for headers in (forged, other_path, old, partial, altered, {**forged, **admin}):
            r = rpc(a, "/mcp/alpha", "tools/call", pid, headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["type"].endswith("/unauthenticated")


def test_start_up_refuses_a_cluster_it_cannot_secure(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with pytest.raises(RuntimeError, match="cluster_secret"):
        with node(tmp_path, "no-secret", url, {"alpha": fault_server()}, POLICY):
            pass
    env = {"MESHGATE_CLUSTER_SECRET": SECRET}
    (tmp_path / "any").mkdir()
    with pytest.raises(RuntimeError, match="advertise_url"):
        start_gateway(
            tmp_path / "any",
            {"alpha": fault_server()},
            POLICY,
            env=env,
            args=["--registry", url, "--host", "0.0.0.0"],
        )


def test_a_killed_node_is_skipped_then_dropped(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url
    with (
        node(tmp_path, "node-a", url, {"alpha": fault_server()}) as a,
        node(tmp_path, "node-b", url, {"beta": fault_server()}) as b,
    ):
        wait_until("B sees A", lambda: sees(b, "node-a", "alpha"))
        assert b.call("alpha", "echo", {"text": "x"}).status_code == 200
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(timeout=10)
        started = time.monotonic()
        r = b.call("alpha", "echo", {"text": "x"})
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/no-healthy-instance")
        # At once: B cannot start alpha itself, so it does not wait restart_wait_s for it.
        assert "restarting" not in r.json()["detail"], r.json()
        assert "retry-after" in r.headers
        assert b.call("beta", "echo", {"text": "own"}).status_code == 200
        # the dead node's records expire with their lease (3 s here)
        wait_until("A gone from /nodes", lambda: node_ids(b) == ["node-b"], timeout=15)
        assert time.monotonic() - started < 15
        r = b.call("alpha", "echo", {"text": "x"})
        assert r.status_code == 503, r.text
        assert "restarting" not in r.json()["detail"], r.json()


def test_a_loop_of_forwards_ends_with_508(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url
    # Each node runs `ghost` and can start none of it; each is told (by a record of the other
    # node that is not true) that the other has a healthy one: A -> B -> A -> ...
    servers = {"ghost": fault_server("--exit-immediately", "3"), "own": fault_server()}
    policy = "[servers.ghost.restart]\nmax_failures = 1\n"
    env = {"MESHGATE_MAX_HOPS": "4"}
    with (
        node(tmp_path, "node-a", url, servers, policy, env) as a,
        node(tmp_path, "node-b", url, servers, policy, env) as b,
    ):
        client = redis.Redis.from_url(url)
        try:
            for name in ("node-a", "node-b"):
                key = f"meshgate:inst:{name}:ghost-9"
                record: dict[str, Any] = {
                    "id": "ghost-9",
                    "service": "ghost",
                    "kind": "mcp",
                    "node": name,
                    "state": "healthy",
                    "pid": None,
                    "address": None,
                    "weight": 1,
                    "metadata": {},
                }
                client.set(key, json.dumps(record), px=60_000)
                client.publish("meshgate:registry", json.dumps({"op": "put", "key": key}))
        finally:
            client.close()
        wait_until("A believes B", lambda: sees(a, "node-b", "ghost"))
        wait_until("B believes A", lambda: sees(b, "node-a", "ghost"))
        r = rpc(a, "/mcp/ghost", "resources/read", {"uri": "test://x"})
        error = messages(r)[-1]["error"]
        assert error["data"]["type"] == "loop-detected", error
        assert error["data"]["status"] == 508
        assert error["data"]["max_hops"] == 4


def test_an_embedded_registry_is_a_cluster_of_one(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"alpha": fault_server()}, node="solo") as gw:
        items = gw.get(f"{API}/nodes").json()["items"]
        assert [(n["id"], n["self"]) for n in items] == [("solo", True)]
        assert items[0]["url"] == gw.url
        assert items[0]["servers"] == {"alpha": {"healthy": 1, "total": 1}}
        assert gw.get(f"{API}/health").json()["nodes"] == items
        services = gw.get(f"{API}/services").json()["items"]
        assert all(s["kind"] != "node" for s in services)
