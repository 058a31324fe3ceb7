"""The official MCP conformance suite against meshgate's Streamable HTTP endpoints.

`@modelcontextprotocol/conformance` (npm, pinned in package.json; Node.js >= 22, which make
installs) runs every server scenario of both protocol eras against:

- `/mcp/conformance`: meshgate's stdio fixture server (`meshgate.testing.conformance_server`),
  which offers the `test_*` tools, prompts and resources the suite calls;
- `/mcp`: the aggregate of that server (mounted without a namespace) and server-everything;
- `/mcp/everything`: @modelcontextprotocol/server-everything, which lacks those fixtures;
- `/mcp/remote` of a second gateway whose `remote` server is the first one's
  `/mcp/conformance` (a remote stateless server, reached over HTTP): every request crosses two
  gateways and two era bridges.

The tasks extension's scenarios (`tasks-*`, in the suite's `pending` set, always on
2026-07-28) run against `/mcp/conformance` and `/mcp`, with the fixture's task tools made
task-capable by policy; they count as version "tasks".

Every failing check must be listed, with its reason, in `tests/conformance/expected.py`; a
listed check that passes fails the test too. The pass counts go to the README.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.expected import expected
from tests.gateway import REPO, Gateway, npm_server, run_gateway

pytestmark = pytest.mark.timeout(900)

SUITE = REPO / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
VERSIONS = ("2025-11-25", "2026-07-28")
ENDPOINTS = ("/mcp/conformance", "/mcp", "/mcp/everything")
# The fixture's tools of the tasks scenarios, as the suite expects them to run.
TASK_TOOLS = """
[servers.conformance.tool_task_support]
slow_compute = "optional"
protocol_error_job = "optional"
confirm_delete = "optional"
multi_input = "optional"
failing_job = "required"
test_tool_with_task = "required"
"""


def _node22() -> str:
    node = os.environ.get("MESHGATE_NODE22", "")
    if not node or not Path(node).exists():
        raise RuntimeError(
            "Node.js 22 for the conformance suite is missing: run it via `make test`"
        )
    return node


def _run_suite(url: str, version: str, out: Path) -> tuple[int, set[str], str]:
    """(passed checks, failed check ids, log tail) of one run of every server scenario of a
    protocol version, or ("tasks") of the tasks extension's scenarios."""
    cmd = [_node22(), str(SUITE), "server", "--url", url, "-o", str(out)]
    if version == "tasks":
        cmd += ["--suite", "pending"]  # extension scenarios pick their own version
    else:
        cmd += ["--suite", "all", "--spec-version", version]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent)
    passed, failed = 0, set()
    for path in glob.glob(str(out / "*" / "checks.json")):
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T.*$", "", Path(path).parent.name)
        scenario = scenario.removeprefix("server-")
        if (version == "tasks") != scenario.startswith("tasks-"):
            continue
        for check in json.loads(Path(path).read_text()):
            if check["status"] == "SUCCESS":
                passed += 1
            elif check["status"] == "FAILURE":
                failed.add(f"{scenario}/{check['id']}")
    return passed, failed, (proc.stdout + proc.stderr)[-3000:]


def test_conformance_suite(tmp_path: Path) -> None:
    servers = {
        "conformance": {
            "command": sys.executable,
            "args": ["-m", "meshgate.testing.conformance_server"],
        },
        "everything": npm_server("mcp-server-everything"),
    }
    policy = '[servers.conformance]\nnamespace = ""\n' + TASK_TOOLS
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_gateway(tmp_path / "a", servers, policy) as gw:
        _wait_healthy(gw)
        # One run at a time: log messages of a shared stdio instance reach a client only
        # while its request is the one in flight (docs/architecture.md).
        results = {
            (endpoint, version): _run_suite(gw.url + endpoint, version, tmp_path / f"out{i}")
            for i, (endpoint, version) in enumerate((e, v) for e in ENDPOINTS for v in VERSIONS)
        }
        remote = {"remote": {"type": "http", "url": f"{gw.url}/mcp/conformance"}}
        with run_gateway(tmp_path / "b", remote) as chained:
            chained.wait_for("remote", lambda v: v["state"] == "healthy", timeout=60)
            for version in VERSIONS:
                out = tmp_path / f"out-remote-{version}"
                results[("/mcp/remote", version)] = _run_suite(
                    chained.url + "/mcp/remote", version, out
                )
        # Last: the tasks scenarios leave tasks behind that go on asking for input (until
        # their deadline) on the shared fixture instance, where a request to the client is
        # attributed only while a single call is in flight.
        for endpoint in ("/mcp/conformance", "/mcp"):
            out = tmp_path / f"out-tasks{endpoint.replace('/', '-')}"
            results[(endpoint, "tasks")] = _run_suite(gw.url + endpoint, "tasks", out)
    report = []
    problems = []
    for (endpoint, version), (passed, failed, tail) in results.items():
        known = expected(endpoint, version)
        report.append(f"{endpoint} {version}: {passed} passed, {len(failed)} failed (known)")
        if failed - known:
            problems.append(f"{endpoint} {version}: new failures {sorted(failed - known)}\n{tail}")
        if known - failed:
            problems.append(f"{endpoint} {version}: listed but passing {sorted(known - failed)}")
        if passed == 0:
            problems.append(f"{endpoint} {version}: nothing passed\n{tail}")
    print("\n".join(report))
    assert not problems, "\n".join(problems)


def _wait_healthy(gw: Gateway) -> None:
    for name in ("conformance", "everything"):
        gw.wait_for(name, lambda v: v["state"] == "healthy", timeout=60)
