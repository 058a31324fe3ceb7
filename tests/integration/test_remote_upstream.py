"""Remote MCP servers (`url` entries) as upstreams: another meshgate, a TypeScript SDK server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.gateway import REPO, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)


@contextmanager
def ts_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The TypeScript SDK server of tests/interop (handshake era only), on a free port."""
    proc = subprocess.Popen(
        ["node", str(REPO / "tests" / "interop" / "ts_server.mjs"), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp", proc
    finally:
        proc.kill()
        proc.wait(10)


def _text(result: dict[str, object]) -> str:
    content = result["content"]
    assert isinstance(content, list)
    return "".join(str(c["text"]) for c in content)


def test_a_gateway_behind_a_gateway(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_gateway(tmp_path / "a", {"fault": fault_server()}) as a:
        remote = {"remote": {"type": "http", "url": f"{a.url}/mcp/fault"}}
        with run_gateway(tmp_path / "b", remote) as b:
            [inst] = b.wait_for("remote", lambda v: v["state"] == "healthy")["instances"]
            assert inst["era"] == "stateless" and inst["pid"] is None
            assert "echo" in b.server("remote")["tools"]
            r = b.call("remote", "echo", {"text": "two hops"})
            assert r.status_code == 200 and _text(r.json()) == "two hops"
            r = b.call("remote", "no_such_tool")
            assert r.status_code == 404

            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            async def main() -> None:
                for mode in ("legacy", "auto"):
                    async with Client(f"{b.url}/mcp/remote", mode=mode) as c:
                        res = await c.call_tool(
                            "progress", {"steps": 3}, progress_callback=on_progress
                        )
                        assert res.content[0].text == "3 steps"  # type: ignore[union-attr]

            anyio.run(main)
            assert seen == [1, 2, 3, 1, 2, 3]


def test_a_handshake_era_remote_server(tmp_path: Path) -> None:
    with ts_server() as (url, _), run_gateway(tmp_path, {"ts": {"url": url}}) as gw:
        [inst] = gw.wait_for("ts", lambda v: v["state"] == "healthy")["instances"]
        assert inst["era"] == "handshake" and inst["protocol_version"] == "2025-11-25"
        r = gw.call("ts", "echo", {"text": "hello ts"})
        assert r.status_code == 200 and _text(r.json()) == "hello ts"
        r = gw.call("ts", "echo", {"text": 5})  # the server's own validation, passed on
        assert r.status_code == 200 and r.json()["isError"] and "expected string" in r.text

        async def main() -> None:
            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            async with Client(f"{gw.url}/mcp/ts") as c:
                res = await c.call_tool("progress", {"steps": 2}, progress_callback=on_progress)
                assert res.content[0].text == "2 steps"  # type: ignore[union-attr]
            assert seen == [1, 2]

        anyio.run(main)


def test_an_unreachable_remote_server_is_reported_not_hidden(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    policy = "[servers.gone]\nstartup_timeout_s = 2\n[servers.gone.restart]\nmax_failures = 2\n"
    with run_gateway(tmp_path, {"gone": {"url": f"http://127.0.0.1:{port}/mcp"}}, policy) as gw:
        view = gw.wait_for("gone", lambda v: v["state"] == "failed", timeout=60)
        [inst] = view["instances"]
        assert "cannot connect" in inst["last_error"] or "cannot connect" in json.dumps(
            inst.get("last_stderr")
        )
        r = gw.call("gone", "anything")
        assert r.status_code == 503


def test_a_remote_server_that_restarts_gets_a_new_session(tmp_path: Path) -> None:
    with ts_server() as (url, proc):
        port = url.split(":")[2].split("/")[0]
        with run_gateway(tmp_path, {"ts": {"url": url}}) as gw:
            gw.wait_for("ts", lambda v: v["state"] == "healthy")
            before = _text(gw.call("ts", "pid").json())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            again = subprocess.Popen(
                ["node", str(REPO / "tests" / "interop" / "ts_server.mjs"), port],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
            )
            try:
                assert again.stdout is not None and again.stdout.readline().startswith("listening")
                # The old session is unknown to the new process (404): the gateway reconnects.
                deadline = time.monotonic() + 30
                while True:
                    r = gw.call("ts", "pid")
                    if r.status_code == 200 and _text(r.json()) != before:
                        break
                    assert time.monotonic() < deadline, r.text
                    time.sleep(0.2)
            finally:
                again.kill()
                again.wait(10)
