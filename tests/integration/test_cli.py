"""The `meshgate` command line against real files and a real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.testing.gateway import create_key
from tests.gateway import REPO, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)


def meshgate(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_config_accepts_the_example_files() -> None:
    # The example uses commands from the venv and node_modules; check the shape, not PATH.
    r = meshgate("check-config", str(REPO / "examples" / "meshgate.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s)" in r.stdout


def test_check_config_reports_every_problem_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mcp.json"
    bad.write_text(json.dumps({"mcpServers": {"a": {"args": []}, "b": {"command": "x-none"}}}))
    r = meshgate("check-config", str(bad))
    assert r.returncode == 1
    assert f"{bad}: mcpServers.a.command: missing" in r.stdout
    assert f"{bad}: mcpServers.b.command: 'x-none' is not found on PATH" in r.stdout
    r = meshgate("check-config", "--json", str(bad))
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert {p["key"] for p in report["problems"]} == {
        "mcpServers.a.command",
        "mcpServers.b.command",
    }


def test_serve_refuses_broken_config_with_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nstrategy = 'nope'\n")
    r = meshgate("serve", "--policy", str(bad), "--port", "0")
    assert r.returncode == 2
    assert "defaults.strategy: unknown strategy 'nope'" in r.stderr


def test_services_and_call_talk_to_a_running_gateway(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        r = meshgate("services", "--url", gw.url)
        assert r.returncode == 0, r.stderr
        assert "f-1" in r.stdout and "healthy" in r.stdout
        r = meshgate("services", "--url", gw.url, "--json")
        assert json.loads(r.stdout)["items"][0]["name"] == "f"

        r = meshgate("call", "f", "echo", "--args", '{"text": "from the cli"}', "--url", gw.url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "from the cli"
        r = meshgate("call", "f", "echo", "--args", '{"text": "j"}', "--url", gw.url, "--json")
        assert json.loads(r.stdout)["content"][0]["text"] == "j"

        r = meshgate("call", "f", "missing", "--url", gw.url)
        assert r.returncode == 1
        assert "404" in r.stderr and "missing" in r.stderr
        r = meshgate("call", "f", "echo", "--args", "{oops", "--url", gw.url)
        assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_client_commands_explain_an_unreachable_gateway() -> None:
    r = meshgate("services", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2
    assert "cannot reach the gateway" in r.stderr


def test_tasks_command(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        api = "/api/v1/mesh/v2"
        dead = gw.http.post(
            f"{api}/enqueue", json={"target": {"server": "f", "tool": "fail"}, "max_attempts": 1}
        ).json()["task_id"]
        task = gw.get(f"{api}/task/{dead}", params={"wait_s": 30}).json()
        assert task["status"] == "dead"
        r = meshgate("tasks", "--url", gw.url)
        assert r.returncode == 0, r.stderr
        assert dead in r.stdout and "dead" in r.stdout and "f/fail" in r.stdout
        assert task["created_at"] in r.stdout  # as the API gives it, e.g. 2026-11-30T05:38:46.123Z
        r = meshgate("tasks", "list", "--status", "succeeded", "--url", gw.url, "--json")
        assert json.loads(r.stdout)["items"] == []
        r = meshgate("tasks", "show", dead, "--url", gw.url)
        assert json.loads(r.stdout)["status"] == "dead"
        r = meshgate("tasks", "retry", dead, "--url", gw.url)
        assert r.returncode == 0 and "queued" in r.stdout
        r = meshgate("tasks", "cancel", "t-nope", "--url", gw.url)
        assert r.returncode == 1 and "404" in r.stderr
        r = meshgate("tasks", "show", "--url", gw.url)
        assert r.returncode == 2 and "TASK_ID" in r.stderr


def test_client_commands_send_an_api_key_to_a_gateway_with_auth(tmp_path: Path) -> None:
    policy = '[auth]\n\n[roles.reader]\nallow = ["mcp:f/echo", "mcp:f"]\n'
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        r = meshgate("services", "--url", gw.url)
        assert r.returncode == 1
        assert r.stderr.startswith("error 401") and "set MESHGATE_API_KEY" in r.stderr
        key = create_key(tmp_path / "data", "cli", "--role", "reader")
        r = meshgate(
            "call",
            "f",
            "echo",
            "--args",
            '{"text": "hi"}',
            "--url",
            gw.url,
            env={"MESHGATE_API_KEY": key},
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "hi"
        r = meshgate("services", "--url", gw.url, "--api-key", "mgk_wrong")
        assert r.returncode == 1 and r.stderr.startswith("error 401")
        assert "hint" not in r.stderr  # a key was given: it is wrong, not missing
