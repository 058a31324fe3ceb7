"""The example configuration (examples/mcp.json with examples/meshgate.toml) runs as shipped:
every server in it starts behind one gateway, lists its tools and does real work, over REST and
over the `/mcp` aggregate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.gateway import NODE_BIN, REPO, Gateway, git_repo, run_gateway

pytestmark = [pytest.mark.timeout(180), pytest.mark.npm]

EXAMPLES = REPO / "examples"
NPM_BINS = (
    "mcp-server-everything",
    "mcp-server-memory",
    "mcp-server-filesystem",
    "mcp-server-sequential-thinking",
)
# A few tools each server must list: proof that its catalog came through the gateway.
TOOLS = {
    "time": {"get_current_time", "convert_time"},
    "git": {"git_status", "git_log", "git_diff"},
    "everything": {"echo", "get-sum", "trigger-long-running-operation"},
    "memory": {"create_entities", "read_graph", "search_nodes"},
    "filesystem": {"write_file", "read_text_file", "list_allowed_directories"},
    "sequential-thinking": {"sequentialthinking"},
}


@dataclass
class Example:
    """The running example gateway and the places its servers were pointed at."""

    gw: Gateway
    repo: Path  # the git server's repository
    files: Path  # the only directory the filesystem server may touch
    data: Path  # the gateway's data directory (the memory server's file lives there)


def example_servers(repo: Path, files: Path) -> dict[str, dict[str, Any]]:
    """examples/mcp.json with only what a test must change: the git repository and the
    filesystem root (both `.` there) point into the test's directory, and `npx` runs from the
    repository so that it finds the servers `make setup` installed in node_modules."""
    servers: dict[str, dict[str, Any]] = json.loads((EXAMPLES / "mcp.json").read_text())[
        "mcpServers"
    ]
    assert set(servers) == set(TOOLS), "a server was added to the example: test it here"
    assert servers["git"]["args"] == ["--repository", "."]
    servers["git"]["args"] = ["--repository", str(repo)]
    assert servers["filesystem"]["args"][-1] == "."
    servers["filesystem"]["args"][-1] = str(files)
    for entry in servers.values():
        if entry["command"] == "npx":
            entry["cwd"] = str(REPO)
    return servers


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    missing = [b for b in NPM_BINS if not (NODE_BIN / b).exists()]
    assert not missing, f"{missing} missing from node_modules: run `make setup` (npm ci) first"
    for command in ("mcp-server-time", "mcp-server-git"):
        assert shutil.which(command), f"{command} is not on PATH: run `make setup` first"
    work = tmp_path_factory.mktemp("example")
    repo = work / "repo"
    git_repo(repo, "hello\n")
    files = work / "files"
    files.mkdir()
    policy = (EXAMPLES / "meshgate.toml").read_text()  # its port gives way to --port 0
    # Offline: npx uses the installed servers and fails rather than fetch one from a registry.
    env = {"npm_config_offline": "true"}
    with run_gateway(work, example_servers(repo, files), policy, env=env) as gw:
        yield Example(gw, repo, files, work / "data")


def _ok(gw: Gateway, server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool call over REST that must succeed; its result."""
    r = gw.call(server, tool, arguments)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    assert not result.get("isError"), result
    return result


def _text(result: dict[str, Any]) -> str:
    return "".join(str(c["text"]) for c in result["content"] if c.get("type") == "text")


def _aggregate(gw: Gateway, name: str, arguments: dict[str, Any]) -> str:
    """Call a namespaced tool through `/mcp` with a real MCP client; the text it answered."""
    texts: list[str] = []

    async def main() -> None:
        async with Client(f"{gw.url}/mcp") as c:
            r = await c.call_tool(name, arguments)
            assert not r.is_error, r
            texts.extend(c.text for c in r.content if c.type == "text")

    anyio.run(main)
    return "".join(texts)


def test_every_example_server_is_healthy_with_its_policy(example: Example) -> None:
    gw = example.gw
    expected_instances = {"time": 2, "everything": 2}  # from examples/meshgate.toml
    for name, tools in TOOLS.items():
        view = gw.wait_for(name, lambda v: all(i["state"] == "healthy" for i in v["instances"]))
        assert len(view["instances"]) == expected_instances.get(name, 1), view
        listed = gw.get(f"/api/v1/mcp/servers/{name}/tools").json()
        assert tools <= {t["name"] for t in listed["items"]}, (name, listed)
    assert gw.server("time")["strategy"] == "p2c"
    assert gw.server("everything")["strategy"] == "round_robin"


def test_aggregate_lists_every_example_server(example: Example) -> None:
    names: set[str] = set()

    async def main() -> None:
        async with Client(f"{example.gw.url}/mcp") as c:
            cursor: str | None = None
            while True:
                page = await c.list_tools(cursor=cursor)
                names.update(t.name for t in page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break

    anyio.run(main)
    for server, tools in TOOLS.items():
        assert {f"{server}__{t}" for t in tools} <= names, server


def test_time_gives_the_current_utc_time(example: Example) -> None:
    result = _ok(example.gw, "time", "get_current_time", {"timezone": "UTC"})
    body = json.loads(_text(result))
    assert body["timezone"] == "UTC"
    when = datetime.fromisoformat(body["datetime"])
    assert when.utcoffset() == timedelta(0)
    # The server reads the same clock as this test: a wrong zone would be hours off.
    assert abs(when - datetime.now(UTC)) < timedelta(minutes=5)
    converted = json.loads(
        _text(
            _ok(
                example.gw,
                "time",
                "convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
            )
        )
    )
    assert converted["target"]["datetime"].endswith("T21:00:00+09:00")


def test_git_reports_status_and_log_of_a_temporary_repository(example: Example) -> None:
    status = _text(_ok(example.gw, "git", "git_status", {"repo_path": str(example.repo)}))
    assert "Untracked files" in status and "notes.txt" in status
    assert "README" not in status  # committed and unchanged
    log = _text(_ok(example.gw, "git", "git_log", {"repo_path": str(example.repo)}))
    assert "first commit" in log


def test_everything_echoes_over_rest_and_the_aggregate(example: Example) -> None:
    for i in range(4):  # round_robin over both instances
        text = _text(_ok(example.gw, "everything", "echo", {"message": f"hello {i}"}))
        assert text == f"Echo: hello {i}"
    assert _aggregate(example.gw, "everything__echo", {"message": "via /mcp"}) == "Echo: via /mcp"
    assert "5" in _text(_ok(example.gw, "everything", "get-sum", {"a": 2, "b": 3}))


def test_memory_keeps_what_it_was_told_in_the_data_dir(example: Example) -> None:
    entity = {"name": "meshgate", "entityType": "project", "observations": ["routes MCP calls"]}
    _ok(example.gw, "memory", "create_entities", {"entities": [entity]})
    graph = json.loads(_aggregate(example.gw, "memory__read_graph", {}))
    assert entity in graph["entities"]
    # `${MESHGATE_DATA_DIR:-/tmp}` in the example was expanded from the gateway's environment.
    stored = (example.data / "meshgate-memory.jsonl").read_text()
    assert "routes MCP calls" in stored


def test_filesystem_writes_and_reads_only_inside_its_root(example: Example) -> None:
    path = example.files / "greeting.txt"
    _ok(example.gw, "filesystem", "write_file", {"path": str(path), "content": "hello mesh"})
    assert path.read_text() == "hello mesh"
    text = _aggregate(example.gw, "filesystem__read_text_file", {"path": str(path)})
    assert text == "hello mesh"
    outside = example.repo / "README"
    r = example.gw.call("filesystem", "read_text_file", {"path": str(outside)})
    assert r.status_code == 200 and r.json()["isError"] is True
    assert "outside allowed directories" in _text(r.json())


def test_sequential_thinking_records_one_thought(example: Example) -> None:
    thought = {
        "thought": "Route the call to the least busy instance.",
        "thoughtNumber": 1,
        "totalThoughts": 1,
        "nextThoughtNeeded": False,
    }
    body = json.loads(_text(_ok(example.gw, "sequential-thinking", "sequentialthinking", thought)))
    assert body["thoughtNumber"] == 1 and body["nextThoughtNeeded"] is False
    assert body["thoughtHistoryLength"] >= 1
