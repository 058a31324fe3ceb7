"""What forwarding a call to a peer node adds to it, in one run.

Two gateways share one redis-server: node A runs meshgate's fault server as `s`, node B runs
nothing. The same `echo` through the REST tool call, driven by wrk at each concurrency:

- `local`: to node A, which runs the server;
- `forwarded`: to node B, which sends it on to A's `/mcp/s` (stateless MCP over HTTP);
- `forwarded, signed`: the same with `[auth]` on both nodes (an API key per request on B,
  an HMAC node signature on the hop to A);
- `session` and `session, relayed`: `tools/call` of `echo` in one 2025-11-25 MCP session
  opened on A, POSTed to A's `/mcp/s`, then to B's, which relays it to A as it is (the session
  lives on A).

    .venv/bin/python bench/bench_forward.py [--duration 10] [--concurrency 1 16] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_echo import SERVERS, make_key, print_rows, run_rest, run_wrk
from meshgate.testing.gateway import GatewayProcess, start_gateway
from meshgate.testing.redis_server import RedisServer

SERVER = "fault"
POLICY = '[mesh]\nlog_level = "warning"\naudit_tool_calls = false\n[defaults]\nmax_in_flight = 64\n'
AUTH = '\n[auth]\n\n[roles.agent]\nallow = ["mcp:s/echo"]\n'
SECRET = "a-cluster-secret-for-the-benchmark"


def node(workdir: Path, name: str, redis_url: str, policy: str, *, runs: bool) -> GatewayProcess:
    cmd, _, _ = SERVERS[SERVER]
    workdir.mkdir(parents=True)
    servers = {"s": {"command": cmd[0], "args": cmd[1:]}} if runs else {}
    return start_gateway(
        workdir,
        servers,
        policy,
        env={"MESHGATE_CLUSTER_SECRET": SECRET},
        args=["--node-id", name, "--registry", redis_url, "--log-level", "info"],
    )


def key_flags(workdir: Path, redis_url: str) -> tuple[str, ...]:
    """`meshgate keys create` flags for a node's keys: the shared Redis, its policy."""
    return ("--registry", redis_url, "--policy", str(workdir / "meshgate.toml"))


def wait_forwarding(url: str, headers: dict[str, str]) -> None:
    """Until node B knows A's server (its record has arrived)."""
    end = time.monotonic() + 30
    body = {"arguments": {"text": "x"}}
    while time.monotonic() < end:
        r = httpx.post(f"{url}/api/v1/mcp/servers/s/tools/echo", json=body, headers=headers)
        if r.status_code == 200:
            return
        time.sleep(0.1)
    raise RuntimeError("node B never reached node A's server")


SESSION_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.headers["Mcp-Session-Id"] = "%s"
"""


def open_session(url: str, headers: dict[str, str]) -> str:
    """A 2025-11-25 session on the node at `url`, initialized."""
    base = {"Accept": "application/json, text/event-stream", **headers}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    r = httpx.post(f"{url}/mcp/s", json=init, headers=base)
    r.raise_for_status()
    session = r.headers["mcp-session-id"]
    base |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    httpx.post(f"{url}/mcp/s", json=done, headers=base).raise_for_status()
    return session


def run_session(
    url: str, session: str, duration: int, levels: list[int], key: str | None
) -> dict[int, dict[str, float]]:
    _, tool, args = SERVERS[SERVER]
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    body = {**call, "params": {"name": tool, "arguments": args}}
    script = SESSION_SCRIPT % (json.dumps(body), session)
    if key is not None:
        script += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    return run_wrk(f"{url}/mcp/s", script, duration, levels)


def run(
    url: str, duration: int, levels: list[int], key: str | None = None
) -> dict[int, dict[str, float]]:
    return run_rest(url, SERVER, duration, levels, key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    rows: list[tuple[str, dict[int, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = RedisServer(root).start()
        try:
            for label, policy in (("", POLICY), (" (auth)", POLICY + AUTH)):
                sub = root / ("auth" if label else "open")
                a_node = node(sub / "a", "node-a", redis.url, policy, runs=True)
                b_node = node(sub / "b", "node-b", redis.url, policy, runs=False)
                try:
                    a_dir = sub / "a"
                    key = make_key(a_dir / "data", *key_flags(a_dir, redis.url)) if label else None
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    wait_forwarding(b_node.url, headers)
                    rows.append((f"local{label}", run(a_node.url, a.duration, a.concurrency, key)))
                    forwarded = "forwarded, signed" if label else "forwarded"
                    rows.append(
                        (f"{forwarded}{label}", run(b_node.url, a.duration, a.concurrency, key))
                    )
                    session = open_session(a_node.url, headers)
                    for name, url in (("session", a_node.url), ("session, relayed", b_node.url)):
                        result = run_session(url, session, a.duration, a.concurrency, key)
                        rows.append((f"{name}{label}", result))
                finally:
                    b_node.stop()
                    a_node.stop()
        finally:
            redis.stop()
    base: dict[str, dict[int, dict[str, float]]] = {}
    local: dict[int, dict[str, float]] = {}
    for name, result in rows:
        if name.startswith(("local", "session")) and "relayed" not in name:
            local = result  # what the rows after it add to
        base[name] = local

    def added(name: str, c: int, r: dict[str, float]) -> str:
        return f"{r['p50_ms'] - base[name][c]['p50_ms']:+.2f}"

    print_rows(rows, "p50 added ms", added, a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
