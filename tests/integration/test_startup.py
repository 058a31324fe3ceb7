"""`meshgate serve` as a process: start-up problems are one clear line and exit code 2
before it listens; server commands are found without an activated environment; client
commands find the gateway by the environment `serve` uses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.testing.gateway import start_gateway
from tests.gateway import REPO, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

CLEAN_PATH = "/usr/bin:/bin"  # no venv, no node_modules
VENV_BIN = Path(sys.executable).parent


def serve(tmp_path: Path, *args: str, servers: dict[str, object] | None = None) -> list[str]:
    """Run `meshgate serve`, which must fail at start: its stderr lines."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers or {}}))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": CLEAN_PATH, "HOME": str(tmp_path)},
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert not any("listening" in line or "Traceback" in line for line in lines), r.stderr
    return lines


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which no file can be made. As root, permissions do not stop writes, so
    the directory is made immutable (chattr +i, which needs CAP_LINUX_IMMUTABLE and ext4,
    xfs or btrfs); otherwise it is made read-only."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
        pytest.skip("root, and chattr +i is not available here: no unwritable directory")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    assert serve(tmp_path, "--data-dir", str(data)) == [
        f"error: data dir {data} exists and is not a directory"
    ]


def test_a_data_dir_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    data = blocker / "a" / "data"
    assert serve(tmp_path, "--data-dir", str(data)) == [
        f"error: data dir {data} cannot be created: {blocker} is a file, not a directory"
    ]


def test_a_data_dir_that_cannot_be_written(tmp_path: Path, read_only_dir: Path) -> None:
    [line] = serve(tmp_path, "--data-dir", str(read_only_dir))
    reason = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    assert line == f"error: data dir {read_only_dir} is not writable: {reason}"
    # Inside it, the data dir cannot be created at all.
    [line] = serve(tmp_path, "--data-dir", str(read_only_dir / "data"))
    assert line == f"error: data dir {read_only_dir / 'data'} cannot be created: {reason}"


def test_a_data_dir_where_nothing_can_be_created_even_as_root(tmp_path: Path) -> None:
    # procfs takes no new entries from anyone.
    [line] = serve(tmp_path, "--data-dir", "/proc/meshgate-data")
    assert (
        line == "error: data dir /proc/meshgate-data cannot be created: No such file or directory"
    )


def test_a_data_dir_whose_parents_are_missing_is_created(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b" / "data"
    gw = start_gateway(tmp_path, {}, env={"MESHGATE_DATA_DIR": str(data)})
    try:
        assert (data / "registry.sqlite3").is_file() and (data / "tasks.sqlite3").is_file()
    finally:
        assert gw.stop() == 0


def test_a_registry_database_that_cannot_be_written(tmp_path: Path, read_only_dir: Path) -> None:
    data = str(tmp_path / "data")
    blocker = tmp_path / "file"
    blocker.write_text("")
    # sqlite:///PATH with PATH absolute: the URL of /tmp/x is sqlite:///tmp/x.
    db = blocker / "registry.sqlite3"
    assert serve(tmp_path, "--data-dir", data, "--registry", f"sqlite://{db}") == [
        f"error: the directory of the registry database {blocker} exists and is not a directory"
    ]
    db = blocker / "sub" / "registry.sqlite3"
    assert serve(tmp_path, "--data-dir", data, "--registry", f"sqlite://{db}") == [
        f"error: the directory of the registry database {db.parent} cannot be created: "
        f"{blocker} is a file, not a directory"
    ]
    assert serve(tmp_path, "--data-dir", data, "--registry", f"sqlite://{tmp_path}") == [
        f"error: registry database {tmp_path} is not a regular file"
    ]
    reason = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    db = read_only_dir / "registry.sqlite3"
    assert serve(tmp_path, "--data-dir", data, "--registry", f"sqlite://{db}") == [
        f"error: the directory of the registry database {read_only_dir} is not writable: {reason}"
    ]
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, " * 100)
    assert serve(tmp_path, "--data-dir", data, "--registry", f"sqlite://{garbage}") == [
        f"error: cannot open the database {garbage}: file is not a database"
    ]
    # A task database that is not one: the same, for the data dir's file.
    os.makedirs(data, exist_ok=True)
    Path(data, "tasks.sqlite3").write_bytes(b"this is not a database, " * 100)
    assert serve(tmp_path, "--data-dir", data) == [
        f"error: cannot open the database {data}/tasks.sqlite3: file is not a database"
    ]


def test_commands_are_found_next_to_meshgates_python(tmp_path: Path) -> None:
    # `.venv/bin/meshgate serve` with the venv not activated: PATH lacks its bin.
    if shutil.which("mcp-server-time", path=str(VENV_BIN)) is None:
        pytest.skip("mcp-server-time is installed by make setup")
    assert shutil.which("mcp-server-time", path=CLEAN_PATH) is None
    servers: dict[str, dict[str, Any]] = {
        "time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
    }
    python = Path(sys.executable).name  # `python` of the venv, unless the system has one
    if shutil.which(python, path=CLEAN_PATH) is None:
        servers["py"] = {"command": python, "args": ["-m", "meshgate.testing.fault_server"]}
    with run_gateway(tmp_path, servers, env={"PATH": CLEAN_PATH}) as gw:
        r = gw.call("time", "get_current_time", {"timezone": "UTC"})
        assert r.status_code == 200, r.text
        assert "UTC" in r.json()["content"][0]["text"]
        if "py" in servers:
            assert gw.call("py", "echo", {"text": "hi"}).json()["content"][0]["text"] == "hi"
    # A command found nowhere is still one clear error.
    lines = serve(tmp_path, servers={"x": {"command": "meshgate-no-such-command"}})
    assert any(
        f"'meshgate-no-such-command' is not found on PATH nor in {VENV_BIN}" in line
        for line in lines
    ), lines


def client(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": CLEAN_PATH, **env},
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_client_commands_find_the_gateway_by_meshgate_port(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        port = gw.url.rsplit(":", 1)[1]
        r = client("services", "--json", MESHGATE_PORT=port)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["items"][0]["name"] == "f"
        r = client("services", MESHGATE_PORT=port, MESHGATE_HOST="0.0.0.0")  # listens everywhere
        assert r.returncode == 0 and "f-1" in r.stdout, r.stderr
        r = client("call", "f", "echo", "--args", '{"text": "by port"}', MESHGATE_PORT=port)
        assert r.returncode == 0 and r.stdout.strip() == "by port", r.stderr
        r = client("tasks", "list", "--json", MESHGATE_PORT=port, MESHGATE_HOST="127.0.0.1")
        assert r.returncode == 0 and json.loads(r.stdout)["items"] == [], r.stderr

        # --url wins over the environment, and MESHGATE_URL over host and port.
        elsewhere = f"http://127.0.0.1:{closed_port()}"
        r = client("services", "--url", gw.url, MESHGATE_PORT=str(closed_port()))
        assert r.returncode == 0, r.stderr
        r = client("services", "--url", elsewhere, MESHGATE_PORT=port)
        assert r.returncode == 2 and f"cannot reach the gateway at {elsewhere}" in r.stderr
        r = client("services", MESHGATE_URL=gw.url, MESHGATE_PORT=str(closed_port()))
        assert r.returncode == 0, r.stderr

    r = client("services", MESHGATE_PORT="http")
    assert r.returncode == 2 and "MESHGATE_PORT='http' is not a port number" in r.stderr
