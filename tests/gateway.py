"""Run a real gateway process for tests, and check that it leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from meshgate.testing.gateway import GatewayProcess, start_gateway

REPO = Path(__file__).resolve().parent.parent
NODE_BIN = REPO / "node_modules" / ".bin"
FAULT_SERVER = [sys.executable, "-m", "meshgate.testing.fault_server"]


def fault_server(*flags: str) -> dict[str, Any]:
    """A `.mcp.json` entry for our fault-injecting server."""
    return {"command": FAULT_SERVER[0], "args": [*FAULT_SERVER[1:], *flags]}


def npm_server(package_bin: str, *args: str) -> dict[str, Any]:
    """A `.mcp.json` entry for an npm MCP server installed in node_modules by make."""
    path = NODE_BIN / package_bin
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make setup` (npm ci) first")
    return {"command": str(path), "args": list(args)}


def npx_server(package: str, *args: str) -> dict[str, Any]:
    """A Claude Desktop style `npx -y PACKAGE` entry, resolved from the repo's node_modules."""
    return {"command": "npx", "args": ["-y", package, *args], "cwd": str(REPO)}


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of `pids` is alive; return the survivors."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        survivors = {p for p in pids if alive(p)}
        if not survivors:
            return set()
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


class Gateway:
    """A client's view of a gateway process started by `run_gateway`."""

    def __init__(self, process: GatewayProcess) -> None:
        self.process = process
        self.proc = process.proc
        self.url = process.url
        self.log = process.log
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **body: Any,
    ) -> httpx.Response:
        return self.http.post(
            f"/api/v1/mcp/servers/{server}/tools/{tool}",
            json={"arguments": dict(arguments or {}), **body},
            headers=dict(headers or {}),
        )

    def server(self, name: str) -> dict[str, Any]:
        r = self.get(f"/api/v1/mcp/servers/{name}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def instances(self, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.server(name)["instances"]
        return items

    def wait_for(self, name: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Poll a server's view until `predicate(view)` holds."""
        end = time.monotonic() + timeout
        view = self.server(name)
        while not predicate(view):
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting on {name}: {json.dumps(view)}")
            time.sleep(0.05)
            view = self.server(name)
        return view


@contextmanager
def run_gateway(
    tmp_path: Path,
    servers: Mapping[str, Mapping[str, Any]],
    policy: str = "",
    *,
    env: Mapping[str, str] | None = None,
    node: str = "test",
    args: Sequence[str] = (),
) -> Iterator[Gateway]:
    """Start a gateway on these servers (`args`: more flags of `meshgate serve`); on exit stop
    it, if a test has not killed it already, and assert nothing is left behind."""
    process = start_gateway(tmp_path, servers, policy, env=env, args=["--node-id", node, *args])
    gw = Gateway(process)
    kids = descendants(process.proc.pid)
    try:
        yield gw
    finally:
        kids |= descendants(process.proc.pid)
        gw.http.close()
        process.stop()
        survivors = wait_gone(kids)
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"processes left behind after shutdown: {sorted(survivors)}"


@dataclass(frozen=True)
class Seen:
    """One request a recording service received."""

    method: str
    path: str
    headers: dict[str, str]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@contextmanager
def recording_service() -> Iterator[tuple[str, list[Seen]]]:
    """A real HTTP service on loopback that answers every method 200 `ok` (HEAD without a
    body) and records each request it receives; yields (its URL, the requests so far)."""
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen.append(Seen(self.command, self.path, headers))
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", "2")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"ok")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serve_app(app: Any, *, scheme: str = "http", **config: Any) -> Iterator[str]:
    """An ASGI app on uvicorn in a thread of its own, on a port from the OS; yields its URL.
    `config` goes to uvicorn.Config (e.g. `http=` a protocol class)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < end and thread.is_alive(), "the app did not start"
            time.sleep(0.02)
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def git_repo(repo: Path, readme: str) -> None:
    """A git repository at `repo` (made) with one commit of a README, and an untracked file:
    something for a git MCP server to report on, whatever the user's git configuration."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "meshgate",
        "GIT_AUTHOR_EMAIL": "meshgate@localhost",
        "GIT_COMMITTER_NAME": "meshgate",
        "GIT_COMMITTER_EMAIL": "meshgate@localhost",
    }
    repo.mkdir()
    (repo / "README").write_text(readme)
    for args in (("init", "-q"), ("add", "README"), ("commit", "-q", "-m", "first commit")):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)
    (repo / "notes.txt").write_text("untracked\n")
