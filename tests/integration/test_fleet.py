"""The older mesh's fleet (examples/sutazai.mcp.json with examples/sutazai.toml) runs behind one
gateway: every server ends healthy or `failed` with a reason, and twelve of them do real work
(files, a git repository, a PostgreSQL cluster, Chromium on a loopback page...) with nothing
fetched from the network."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import NODE_BIN, REPO, Gateway, git_repo, run_gateway

pytestmark = [pytest.mark.timeout(170), pytest.mark.npm]

EXAMPLES = REPO / "examples"
FLEET_BIN = EXAMPLES / "fleet" / "node_modules" / ".bin"
FLEET_VENV_BIN = REPO / ".tools" / "fleet" / "venv" / "bin"
POSTGRES_SH = EXAMPLES / "fleet" / "postgres.sh"
PAGE = (
    "<html><head><title>Fleet page</title></head><body><h1>Hello from the fleet</h1></body></html>"
)
# Servers whose only tools reach the Internet (documentation, web search): they must start, but
# no call is made to them here.
ONLINE_ONLY = {"context7", "duckduckgo", "nx-mcp"}


@dataclass
class Fleet:
    """The running fleet and what its servers were pointed at."""

    gw: Gateway
    root: Path  # the filesystem server's root, a git repository the git server reads
    data: Path  # the gateway's data directory (memory files, playwright's output)
    site: str  # a loopback HTTP server's URL, serving PAGE at /index.html


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A cluster of Debian's PostgreSQL started by the example's own script. Its directory is
    made under the system's temporary directory: as root the cluster runs as an unprivileged
    user, who must be able to reach it."""
    work = Path(tempfile.mkdtemp(prefix="meshgate-fleet-pg-"))
    try:
        started = subprocess.run(
            [str(POSTGRES_SH), "start", str(work), str(_free_port())],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, f"postgres.sh start failed: {started.stderr}"
        try:
            yield started.stdout.strip()
        finally:
            subprocess.run([str(POSTGRES_SH), "stop", str(work)], check=True, timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback HTTP server with one page, for fetch and playwright."""
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(PAGE)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _fleet_servers() -> dict[str, dict[str, Any]]:
    """examples/sutazai.mcp.json with one change: fetch may reach loopback (the example keeps
    the server's refusal of private addresses; this test's page is on 127.0.0.1)."""
    servers: dict[str, dict[str, Any]] = json.loads((EXAMPLES / "sutazai.mcp.json").read_text())[
        "mcpServers"
    ]
    servers["fetch"]["args"] = [*servers["fetch"]["args"], "--allow-private-ips"]
    return servers


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, site: str
) -> Iterator[Fleet]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run `make fleet-servers`"
    for path in (FLEET_BIN / "playwright-mcp", FLEET_VENV_BIN / "mcp-server-fetch"):
        assert path.exists(), f"{path} is missing: run `make fleet-servers`"
    work = tmp_path_factory.mktemp("fleet")
    root = work / "root"
    git_repo(root, "the fleet's root\n")
    env = {
        # As `make fleet` runs it: the project's npm servers and the fleet's on PATH, the
        # fleet's Python venv last.
        "PATH": os.pathsep.join(
            [str(FLEET_BIN), str(NODE_BIN), os.environ["PATH"], str(FLEET_VENV_BIN)]
        ),
        "FLEET_ROOT": str(root),
        "FLEET_POSTGRES_URL": postgres_url,
        "FLEET_CHROMIUM": chromium,
        "npm_config_offline": "true",
    }
    policy = (EXAMPLES / "sutazai.toml").read_text()  # its port gives way to --port 0
    with run_gateway(work, _fleet_servers(), policy, env=env) as gw:
        yield Fleet(gw, root, work / "data", site)


def _settled(gw: Gateway, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every server's view once each instance is healthy or failed (bounded)."""
    end = time.monotonic() + timeout
    while True:
        servers: list[dict[str, Any]] = gw.get("/api/v1/mcp/servers").json()["items"]
        states = {s["name"]: [i["state"] for i in s["instances"]] for s in servers}
        if all(st and all(x in ("healthy", "failed") for x in st) for st in states.values()):
            return servers
        assert time.monotonic() < end, f"servers still starting: {states}"
        time.sleep(0.2)


def _text(result: dict[str, Any]) -> str:
    return "".join(str(c["text"]) for c in result["content"] if c.get("type") == "text")


def _ok(gw: Gateway, server: str, tool: str, arguments: dict[str, Any]) -> str:
    """A tool call over REST that must succeed; the text it answered."""
    r = gw.call(server, tool, arguments)
    assert r.status_code == 200, (server, tool, r.text)
    result: dict[str, Any] = r.json()
    assert not result.get("isError"), (server, tool, result)
    return _text(result)


def _filesystem(f: Fleet) -> None:
    assert "[FILE] README" in _ok(f.gw, "filesystem", "list_directory", {"path": str(f.root)})


def _fetch(f: Fleet) -> None:
    text = _ok(f.gw, "fetch", "fetch", {"url": f"{f.site}/index.html"})
    assert "Hello from the fleet" in text


def _sequential_thinking(f: Fleet) -> None:
    thought = {
        "thought": "Route each call to the least busy instance.",
        "thoughtNumber": 1,
        "totalThoughts": 1,
        "nextThoughtNeeded": False,
    }
    body = json.loads(_ok(f.gw, "sequential-thinking", "sequentialthinking", thought))
    assert body["thoughtNumber"] == 1 and body["nextThoughtNeeded"] is False


def _memory(f: Fleet) -> None:
    entity = {"name": "meshgate", "entityType": "project", "observations": ["runs the fleet"]}
    _ok(f.gw, "memory", "create_entities", {"entities": [entity]})
    assert entity in json.loads(_ok(f.gw, "memory", "read_graph", {}))["entities"]
    assert "runs the fleet" in (f.data / "fleet-memory.jsonl").read_text()


def _postgres(f: Fleet) -> None:
    rows = json.loads(_ok(f.gw, "postgres", "query", {"sql": "SELECT 1 + 1 AS two"}))
    assert rows == [{"two": 2}]


def _playwright(f: Fleet) -> None:
    text = _ok(f.gw, "playwright", "browser_navigate", {"url": f"{f.site}/index.html"})
    assert "Page Title: Fleet page" in text
    snapshot = _ok(f.gw, "playwright", "browser_snapshot", {})
    assert "Hello from the fleet" in snapshot


def _git_status(f: Fleet) -> None:
    status = _ok(f.gw, "git", "git_status", {"repo_path": str(f.root)})
    assert "notes.txt" in status and "README" not in status


def _time(f: Fleet) -> None:
    body = json.loads(_ok(f.gw, "time", "get_current_time", {"timezone": "UTC"}))
    assert body["timezone"] == "UTC"


def _memory_bank(f: Fleet) -> None:
    write = {"projectName": "fleet", "fileName": "notes.md", "content": "meshgate runs it"}
    _ok(f.gw, "memory-bank", "memory_bank_write", write)
    read = {"projectName": "fleet", "fileName": "notes.md"}
    assert "meshgate runs it" in _ok(f.gw, "memory-bank", "memory_bank_read", read)


def _knowledge_graph(f: Fleet) -> None:
    entity = {"name": "gateway", "entityType": "service", "observations": ["in front"]}
    _ok(f.gw, "knowledge-graph", "create_entities", {"entities": [entity]})
    found = _ok(f.gw, "knowledge-graph", "search_nodes", {"query": "gateway"})
    assert "in front" in found


def _extended_memory(f: Fleet) -> None:
    save = {"content": "meshgate routes the fleet", "importance_level": 7, "project_id": "fleet"}
    _ok(f.gw, "extended-memory", "save_context", save)
    loaded = _ok(f.gw, "extended-memory", "load_contexts", {"project_id": "fleet"})
    assert "meshgate routes the fleet" in loaded


def _mcp_ssh(f: Fleet) -> None:
    # No host is reachable without a network: listing its (empty) sessions is the harmless call.
    assert "No active SSH sessions" in _ok(f.gw, "mcp-ssh", "list_sessions", {})


CALLS: dict[str, Callable[[Fleet], None]] = {
    "filesystem": _filesystem,
    "fetch": _fetch,
    "sequential-thinking": _sequential_thinking,
    "memory": _memory,
    "postgres": _postgres,
    "playwright": _playwright,
    "git": _git_status,
    "time": _time,
    "memory-bank": _memory_bank,
    "knowledge-graph": _knowledge_graph,
    "extended-memory": _extended_memory,
    "mcp-ssh": _mcp_ssh,
}


def test_every_fleet_server_ends_healthy_or_failed_with_a_reason(fleet: Fleet) -> None:
    servers = _settled(fleet.gw)
    names = {s["name"] for s in servers}
    assert names == set(CALLS) | ONLINE_ONLY, "a server was added to the fleet: test it here"
    for s in servers:
        for inst in s["instances"]:
            if inst["state"] == "failed":
                assert inst.get("last_error"), (s["name"], inst)
    healthy = {s["name"] for s in servers if all(i["state"] == "healthy" for i in s["instances"])}
    # Those that need no network start here; the online-only ones may, and need no token.
    assert set(CALLS) <= healthy, {s["name"]: s["instances"] for s in servers}
    for name in healthy:
        listed = fleet.gw.get(f"/api/v1/mcp/servers/{name}/tools").json()["items"]
        assert listed, name


@pytest.mark.parametrize("server", sorted(CALLS))
def test_fleet_server_does_real_work(fleet: Fleet, server: str) -> None:
    _settled(fleet.gw)
    CALLS[server](fleet)
