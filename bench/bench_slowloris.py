"""A connection flood against the gateway: how many it holds, for how long, and whether it
still serves a normal client meanwhile.

    .venv/bin/python bench/bench_slowloris.py [--idle 1000] [--slow 1000]
        [--header-timeout 5] [--max-connections 1000] [--baseline-rev REV]

Opens `--idle` connections that never send a byte and `--slow` connections that send a
request head one byte a second and never finish it (slowloris), then, every second, counts the
connections still open (seen from the client: not closed or reset by the gateway) and the
gateway's open file descriptors, and times a normal `GET /health` on a new connection.
`--baseline-rev` runs the same flood against that git revision's gateway as well (its `src`,
taken with `git archive`), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from meshgate.testing.gateway import GatewayProcess, start_gateway

REPO = Path(__file__).resolve().parent.parent
HEAD = b"GET /api/v1/mesh/v2/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 64


def baseline_src(rev: str, into: Path) -> str:
    """`src` of a git revision, exported (no worktree, no checkout)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def flood(
    gw: GatewayProcess, idle: int, slow: int, seconds: int
) -> list[tuple[int, int, int, str]]:
    """Rows of (second, connections open, gateway fds, a normal request's outcome)."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    socks: list[socket.socket] = []
    for _ in range(idle + slow):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks.append(s)
    slow_socks = socks[idle:]
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    open_ = set(range(len(socks)))
    stop = threading.Event()

    def drip() -> None:
        for i in range(len(HEAD)):
            for s in slow_socks:
                with contextlib.suppress(OSError):
                    s.send(HEAD[i : i + 1])
            if stop.wait(1.0):
                return

    threading.Thread(target=drip, daemon=True).start()
    rows = []
    start = time.monotonic()
    try:
        for second in range(seconds + 1):
            while time.monotonic() - start < second:
                for key, _ in sel.select(max(0.0, second - (time.monotonic() - start))):
                    try:
                        data = socks[key.data].recv(65536)
                    except (ConnectionResetError, BlockingIOError):
                        data = b""
                    if not data:
                        sel.unregister(socks[key.data])
                        open_.discard(key.data)
            t = time.monotonic()
            try:
                r = httpx.get(gw.url + "/api/v1/mesh/v2/health", timeout=5)
                outcome = f"{r.status_code} in {1000 * (time.monotonic() - t):.0f} ms"
            except httpx.TransportError as e:
                outcome = type(e).__name__
            rows.append((second, len(open_), fds(gw.proc.pid), outcome))
    finally:
        stop.set()
        sel.close()
        for s in socks:
            s.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--header-timeout", type=float, default=5.0)
    p.add_argument("--max-connections", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--baseline-rev", help="also run this git revision's gateway")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (a.idle + a.slow) + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    env = {
        "MESHGATE_HEADER_TIMEOUT_S": str(a.header_timeout),
        "MESHGATE_MAX_CONNECTIONS": str(a.max_connections),
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, str | None]] = [("this tree", None)]
        if a.baseline_rev:
            runs.append((a.baseline_rev, baseline_src(a.baseline_rev, Path(tmp))))
        for name, src in runs:
            workdir = Path(tmp) / name.replace("/", "_").replace(" ", "_")
            workdir.mkdir()
            gw = start_gateway(workdir, {}, env=env, src=src)
            try:
                before = fds(gw.proc.pid)
                rows = flood(gw, a.idle, a.slow, a.seconds)
            finally:
                gw.stop()
            print(
                f"\n{name}: {a.idle} idle + {a.slow} slowloris connections, "
                f"header_timeout_s {a.header_timeout:g}, max_connections {a.max_connections}; "
                f"gateway fds before: {before}\n"
            )
            print("| s | open | gateway fds | GET /health |")
            print("| ---: | ---: | ---: | --- |")
            for second, open_, fd, outcome in rows:
                print(f"| {second} | {open_} | {fd} | {outcome} |")


if __name__ == "__main__":
    main()
