"""The container image against a real Docker engine: built from this tree (`make image`, reused
when its `meshgate.source` label matches the tree), run with host networking on a loopback
port, called through REST, stopped by its id. Skipped where no engine answers `docker info`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import REPO

# The first test may build the image (a minute or two from a warm layer cache; five from
# nothing); each step below has its own, shorter bound.
pytestmark = pytest.mark.timeout(900)

IMAGE = os.environ.get("MESHGATE_TEST_IMAGE", "meshgate:latest")
BUILD = REPO / "deploy" / "image" / "build.sh"
TIME_CONFIG = {"mcpServers": {"time": {"command": "mcp-server-time", "args": []}}}


@cache
def _engine_problem() -> str | None:
    """Why no container engine can be used here, or None when `docker info` answers."""
    if shutil.which("docker") is None:
        return "no docker command (apt-get install docker.io, then start dockerd)"
    try:
        r = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 15 s"
    if r.returncode != 0:
        return f"no Docker engine answers: {(r.stderr or r.stdout).strip()[:300]}"
    return None


def _docker(*args: str, timeout: float = 60) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr.strip()}"
    return r.stdout.strip()


def _label(image: str) -> str | None:
    """The image's meshgate.source label (build.sh's --source-id), None when it is missing."""
    label = '{{index .Config.Labels "meshgate.source"}}'
    r = subprocess.run(
        ["docker", "image", "inspect", "--format", label, image],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this tree: reused when its label says so, else built by `make image`'s
    script (which makes the Debian base first if it is missing)."""
    problem = _engine_problem()
    if problem is not None:
        pytest.skip(problem)
    wanted = subprocess.run(
        ["bash", str(BUILD), "--source-id"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    if _label(IMAGE) != wanted:
        r = subprocess.run(
            ["bash", str(BUILD)],
            env={**os.environ, "IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=840,
        )
        assert r.returncode == 0, f"building {IMAGE} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        assert _label(IMAGE) == wanted
    return IMAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _container(image: str, *args: str) -> Iterator[str]:
    """A detached container of `image` on the host's network; removed by its id at the end."""
    cid = _docker("run", "--detach", "--network", "host", *args, image)
    try:
        yield cid
    finally:
        subprocess.run(["docker", "rm", "--force", cid], capture_output=True, timeout=60)


def _logs(cid: str) -> str:
    r = subprocess.run(["docker", "logs", cid], capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr)[-4000:]


def _wait_live(cid: str, url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/livez", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        running = _docker("inspect", "--format", "{{.State.Running}}", cid)
        assert running == "true", f"the container exited:\n{_logs(cid)}"
        assert time.monotonic() < deadline, f"/livez never answered:\n{_logs(cid)}"
        time.sleep(0.3)


def _wait_ready(url: str, headers: dict[str, str] | None = None) -> None:
    """Until /readyz answers 200: every MCP server verified (or given up)."""
    deadline = time.monotonic() + 90
    while httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "/readyz never answered 200"
        time.sleep(0.3)


def _call_time(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/mcp/servers/time/tools/get_current_time",
        json={"arguments": {"timezone": "UTC"}},
        headers=headers,
        timeout=30,
    )


def _time_result(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["isError"] is False, body
    result: dict[str, Any] = json.loads(body["content"][0]["text"])
    return result


def test_the_image_serves_a_tool_call_from_a_mounted_config(image: str, tmp_path: Path) -> None:
    config, data = tmp_path / "etc", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    (config / "mcp.json").write_text(json.dumps(TIME_CONFIG))
    (config / "meshgate.toml").write_text("[servers.time]\ninstances = 1\n")
    config.chmod(0o755)
    data.chmod(0o777)  # the image's user (10001) writes here; the test's user owns it
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _container(
        image,
        "--env", "MESHGATE_HOST=127.0.0.1",
        "--env", f"MESHGATE_PORT={port}",
        "--env", "MESHGATE_NODE_ID=boxed",
        "--volume", f"{config}:/etc/meshgate:ro",
        "--volume", f"{data}:/var/lib/meshgate",
        "--health-interval", "1s",
        "--health-start-period", "60s",
    ) as cid:  # fmt: skip
        _wait_live(cid, url)
        _wait_ready(url)
        result = _time_result(_call_time(url))
        assert result["timezone"] == "UTC"
        servers = httpx.get(f"{url}/api/v1/mcp/servers/time", timeout=5).json()
        assert [i["state"] for i in servers["instances"]] == ["healthy"]
        # The gateway runs as the image's user, not root, and keeps its state in the volume.
        assert _docker("exec", cid, "id", "-u") == "10001"
        assert any(p.suffix == ".sqlite3" for p in data.iterdir()), list(data.iterdir())
        deadline = time.monotonic() + 60  # the image's HEALTHCHECK (/livez) passes
        while (status := _docker("inspect", "--format", "{{.State.Health.Status}}", cid)) != (
            "healthy"
        ):
            assert status == "starting", f"health {status}:\n{_logs(cid)}"
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.5)
        # docker stop: SIGTERM through tini, a clean drain, exit status 0.
        _docker("stop", "--time", "20", cid, timeout=60)
        assert _docker("inspect", "--format", "{{.State.ExitCode}}", cid) == "0", _logs(cid)


def test_the_default_config_wants_a_key_made_in_the_container(image: str) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The image's own /etc/meshgate: the time server, [auth] with API keys. Loopback here:
    # host networking would otherwise put it on every address of this machine.
    with _container(
        image, "--env", "MESHGATE_HOST=127.0.0.1", "--env", f"MESHGATE_PORT={port}"
    ) as cid:
        _wait_live(cid, url)
        _wait_ready(url)
        refused = _call_time(url)
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        made = json.loads(
            _docker("exec", cid, "meshgate", "keys", "create", "ops", "--role", "admin", "--json")
        )
        key = made["key"]
        assert _call_time(url, {"Authorization": "Bearer nope"}).status_code == 401
        result = _time_result(_call_time(url, {"Authorization": f"Bearer {key}"}))
        assert result["timezone"] == "UTC"
