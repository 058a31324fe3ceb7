"""The TypeScript SDK client (node, @modelcontextprotocol/sdk) against /mcp and /mcp/{name}."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import REPO, Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

SCRIPT = REPO / "tests" / "interop" / "ts_client.mjs"


def _node(url: str, scenario: str) -> subprocess.Popen[str]:
    """The client, started; it waits for a line on stdin, or its end, where a scenario must."""
    return subprocess.Popen(
        ["node", str(SCRIPT), url, scenario],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _result(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    """What the client printed at its end; closing its stdin tells it to finish."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{out}\n{err}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    servers = {"hs": fault_server("--era", "handshake"), "both": fault_server()}
    with run_gateway(tmp_path_factory.mktemp("ts"), servers) as gw:
        yield gw


@pytest.mark.parametrize("path", ["/mcp/hs", "/mcp/both", "/mcp"])
def test_typescript_client(gw: Gateway, path: str) -> None:
    r = _result(_node(gw.url + path, "basic"))
    assert r["protocolVersion"] == "2025-11-25" and r["sessionId"]
    prefix = "hs__" if path == "/mcp" else ""
    assert f"{prefix}echo" in r["tools"]
    assert r["echo"] == "ts"
    assert r["progress"] == [[1, 3], [2, 3], [3, 3]] and r["progressResult"] == "3 steps"
    assert "from typescript" in r["sampling"]
    assert r["unknownTool"] == -32602
    assert r["listChanged"]


def test_typescript_client_cancels(gw: Gateway) -> None:
    def cancelled() -> int:
        r = gw.call("hs", "stats")
        return len(json.loads(r.json()["content"][0]["text"])["cancelled"])

    before = cancelled()
    proc = _node(gw.url + "/mcp/hs", "cancel")
    gw.wait_for("hs", lambda v: v["instances"][0]["in_flight"] == 1)  # the call is upstream
    assert _result(proc)["cancelled"]
    deadline = time.monotonic() + 10
    while cancelled() == before:
        assert time.monotonic() < deadline, "the server never heard of the cancellation"
        time.sleep(0.05)


def test_typescript_session_survives_a_killed_instance(tmp_path: Path) -> None:
    policy = "[servers.s]\ninstances = 2\n"
    with run_gateway(tmp_path, {"s": fault_server()}, policy) as gw:
        proc = _node(gw.url + "/mcp/s", "loop")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "calling"
        victim = gw.instances("s")[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        gw.wait_for(
            "s",
            lambda v: (
                all(i["state"] == "healthy" for i in v["instances"])
                and victim not in [i["pid"] for i in v["instances"]]
            ),
        )
        r = _result(proc)  # it called on all along, and 40 more times after the replacement
        assert r["errors"] == [] and r["ok"] >= 60
