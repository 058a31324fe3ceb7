"""tools/call over MCP Streamable HTTP: meshgate vs. direct stdio vs. the peer gateways.

Every row calls `echo` of the same stdio server (meshgate's fault server) in the same run:

- direct stdio: a minimal JSON-RPC client on the server's pipe (the ceiling);
- meshgate `/mcp/s`, a 2025-11-25 session, and the same endpoint stateless (2026-07-28);
- mcp-proxy (PyPI, stdio -> Streamable HTTP, one session), supergateway (npm,
  `--stateful`, one session) and ContextForge's stdio bridge (PyPI
  `mcp-contextforge-gateway`, `python -m mcpgateway.translate --expose-streamable-http`)
  fronting the same command.

    .venv/bin/python bench/bench_mcp.py [--duration 10] [--concurrency 1 16] [--peers DIR]
                                        [--rounds N] [--baseline-rev REV] [--controls]

HTTP load comes from `wrk` (Debian package) with two threads, keep-alive connections and a
fresh JSON-RPC id per request, all on one MCP session. Peers are looked for in `--peers`
(default `.tools/peers`, filled by `make bench-peers`); a missing peer is skipped and said so.
`--baseline-rev` adds a gateway run from another revision of this repository (extracted with
`git archive` into a temp dir); the two gateways alternate for `--rounds` rounds and each row
keeps its best. `--controls` adds bench/controls.py's two apps on uvicorn: a fixed reply (the
HTTP server alone) and the least a gateway of this design does (uvicorn and meshgate's
`StdioConnection`). "CPU us/call" is the serving process's own CPU time per request (not
its stdio server's; for meshgate the gateway process, for the peers their main process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench_echo import REPO, SERVERS, bench_direct, revision_src, run_wrk
from meshgate.testing.gateway import start_gateway

STATELESS = "2026-07-28"
JSONObj = dict[str, Any]
HANDSHAKE = "2025-11-25"
ACCEPT = "application/json, text/event-stream"

WRK_SCRIPT = """
local headers = %s
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("base", threads * 1000000000)  -- ids stay unique across wrk threads
end
init = function(args)
  counter = base or 0
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":%%d,"method":"tools/call","params":{"name":"echo",'
    .. '"arguments":{"text":"hi"}%s}}', counter)
  return wrk.format("POST", nil, headers, body)
end
"""


def _lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()) + "}"


def run_mcp_wrk(
    url: str,
    headers: dict[str, str],
    meta: str,
    duration: int,
    levels: list[int],
    cpu_pid: int | None = None,
) -> dict[int, dict[str, float]]:
    """tools/call echo with a fresh id per request (unique across wrk's two threads)."""
    script = WRK_SCRIPT % (_lua_table(headers), meta)
    return run_wrk(url, script, duration, levels, threads=2, cpu_pid=cpu_pid)


def open_session(url: str, version: str = HANDSHAKE) -> dict[str, str]:
    """Initialize a handshake-era session; the headers every later request needs."""
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    r = httpx.post(url, json=init, headers=base, timeout=30)
    r.raise_for_status()
    headers = {**base, "MCP-Protocol-Version": version}
    if "mcp-session-id" in r.headers:
        headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    httpx.post(url, json=note, headers=headers, timeout=30).raise_for_status()
    return headers


def stateless_envelope(method: str, name: str | None = None) -> tuple[JSONObj, dict[str, str]]:
    """The `_meta` envelope and the headers of a 2026-07-28 request."""
    meta: JSONObj = {
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "MCP-Protocol-Version": STATELESS,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return meta, headers


def check_echo(url: str, headers: dict[str, str], meta: dict[str, Any] | None) -> None:
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": "check"}}
    if meta:
        params["_meta"] = meta
    msg = {"jsonrpc": "2.0", "id": "check", "method": "tools/call", "params": params}
    r = httpx.post(url, json=msg, headers=headers, timeout=30)
    if r.status_code != 200 or '"check"' not in r.text:
        raise RuntimeError(f"{url} did not echo: {r.status_code} {r.text[:300]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


CONTEXTFORGE = "1.0.7.post20260921"
# ContextForge refuses to start without these; its stdio bridge uses none of them.
CONTEXTFORGE_ENV = {
    "JWT_SECRET_KEY": "bench-only-jwt-secret-0123456789abcdef0123456789",
    "AUTH_ENCRYPTION_SECRET": "bench-only-encryption-secret-0123456789abcdef",
    "PLATFORM_ADMIN_PASSWORD": "Bench-only-Admin-pass-123!",
}


def start_peer(
    cmd: list[str], port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})},
        start_new_session=True,
    )
    wait_listening(port, proc)
    return proc


def stop_peer(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def bench_peer(
    name: str,
    cmd: list[str],
    port: int,
    path: str,
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
) -> dict[int, dict[str, float]] | None:
    proc = start_peer(cmd, port, env)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        headers = open_session(url)
        check_echo(url, headers, None)
        return run_mcp_wrk(url, headers, "", args.duration, args.concurrency, proc.pid)
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"{name}: skipped, {e}", file=sys.stderr)
        return None
    finally:
        stop_peer(proc)


def bench_control(app: str, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """The same wrk run against one of bench/controls.py's apps on uvicorn."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), f"controls:{app}"]
    cmd += ["--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    proc = start_peer([*cmd, "--log-level", "warning"], port)
    try:
        url = f"http://127.0.0.1:{port}/"
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if app == "stdio_floor":
            check_echo(url, headers, None)
        return run_mcp_wrk(url, headers, "", args.duration, args.concurrency, proc.pid)
    finally:
        stop_peer(proc)


def bench_meshgate(
    base: str, args: argparse.Namespace, pid: int
) -> dict[str, dict[int, dict[str, float]]]:
    """One round on one gateway: a 2025-11-25 session, then stateless calls."""
    url = f"{base}/mcp/s"
    headers = open_session(url)
    check_echo(url, headers, None)
    rows = {"/mcp/s session": run_mcp_wrk(url, headers, "", args.duration, args.concurrency, pid)}
    meta, stateless = stateless_envelope("tools/call", "echo")
    check_echo(url, stateless, meta)
    meta_json = ',"_meta":' + json.dumps(meta, separators=(",", ":"))
    rows["/mcp/s stateless"] = run_mcp_wrk(
        url, stateless, meta_json, args.duration, args.concurrency, pid
    )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--calls", type=int, default=3000, help="calls per direct stdio row")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--peers", type=Path, default=REPO / ".tools" / "peers")
    p.add_argument("--rounds", type=int, default=1, help="rounds per gateway (best is kept)")
    p.add_argument("--baseline-rev", help="also run this git revision's gateway")
    p.add_argument("--controls", action="store_true", help="also run bench/controls.py's two apps")
    args = p.parse_args()
    server_cmd, _, _ = SERVERS["fault"]
    rows: dict[str, dict[int, dict[str, float]]] = {}
    rows["direct stdio"] = asyncio.run(bench_direct("fault", args.calls, args.concurrency))

    with tempfile.TemporaryDirectory() as tmp:
        sources: dict[str, str | None] = {"meshgate": None}
        if args.baseline_rev:
            baseline = revision_src(args.baseline_rev, Path(tmp))
            sources[f"meshgate {args.baseline_rev} (baseline)"] = baseline
        gateways = {}
        try:
            for i, (name, src) in enumerate(sources.items()):
                workdir = Path(tmp) / str(i)
                workdir.mkdir()
                gateways[name] = start_gateway(
                    workdir,
                    {"s": {"command": server_cmd[0], "args": server_cmd[1:]}},
                    '[mesh]\nlog_level = "warning"\n[servers.s]\nmax_in_flight = 64\n',
                    args=["--log-level", "info"],  # the start-up line tells the port
                    src=src,
                )
            # Gateways of two revisions alternate round by round; each row keeps its best.
            for _ in range(args.rounds):
                for name, gw in gateways.items():
                    for label, measured in bench_meshgate(gw.url, args, gw.proc.pid).items():
                        row = rows.setdefault(f"{name} {label}", {})
                        for c, r in measured.items():
                            if c not in row or r["calls_per_s"] > row[c]["calls_per_s"]:
                                row[c] = r
        finally:
            for gw in gateways.values():
                gw.stop()

    if args.controls:
        rows["control: uvicorn, fixed reply"] = bench_control("fixed", args)
        rows["control: uvicorn + StdioConnection"] = bench_control("stdio_floor", args)

    proxy = args.peers / "venv" / "bin" / "mcp-proxy"
    if proxy.exists():
        port = free_port()
        cmd = [str(proxy), "--port", str(port), "--log-level", "WARNING", "--", *server_cmd]
        result = bench_peer("mcp-proxy", cmd, port, "/mcp", args)
        if result:
            rows["mcp-proxy 0.13.0"] = result
    else:
        print(f"mcp-proxy not found at {proxy}: run `make bench-peers`", file=sys.stderr)
    sgw = args.peers / "npm" / "node_modules" / ".bin" / "supergateway"
    if sgw.exists():
        port = free_port()
        stdio = " ".join(server_cmd)
        cmd = [str(sgw), "--stdio", stdio, "--outputTransport", "streamableHttp", "--stateful"]
        cmd += ["--port", str(port), "--logLevel", "none"]
        result = bench_peer("supergateway", cmd, port, "/mcp", args)
        if result:
            rows["supergateway 4.0.0 --stateful"] = result
    else:
        print(f"supergateway not found at {sgw}: run `make bench-peers`", file=sys.stderr)

    bridge = args.peers / "cf" / "bin" / "python"
    if bridge.exists():
        port = free_port()
        cmd = [str(bridge), "-m", "mcpgateway.translate", "--stdio", " ".join(server_cmd)]
        cmd += ["--expose-streamable-http", "--port", str(port), "--logLevel", "warning"]
        result = bench_peer("ContextForge", cmd, port, "/mcp", args, CONTEXTFORGE_ENV)
        if result:
            rows[f"ContextForge {CONTEXTFORGE} translate"] = result
    else:
        print(f"ContextForge not found at {bridge}: run `make bench-peers`", file=sys.stderr)

    print(report(rows, args))
    return 0


def report(rows: dict[str, dict[int, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"fault server echo; direct: {args.calls} calls per row; HTTP rows: wrk, two threads, "
        f"{args.duration} s per row; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "",
        "| path | concurrency | p50 ms | p95 ms | p99 ms | calls/s | errors | CPU us/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in args.concurrency:
        for name, by_level in rows.items():
            r = by_level[c]
            cpu = f"{r['cpu_us_per_call']:.0f}" if "cpu_us_per_call" in r else ""
            lines.append(
                f"| {name} | {c} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} "
                f"| {r['calls_per_s']:.0f} | {r.get('errors', 0):.0f} | {cpu} |"
            )
    lines.append("")
    ours = rows.get("meshgate /mcp/s session")
    for c in args.concurrency:
        if ours is None:
            break
        parts = [
            f"{name} {ours[c]['calls_per_s'] / by_level[c]['calls_per_s']:.2f}x"
            for name, by_level in rows.items()
            if name != "meshgate /mcp/s session"
        ]
        lines.append(f"- concurrency {c}: meshgate session throughput vs. " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
