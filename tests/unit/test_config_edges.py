"""Settings added for the gateway's edges: trusted proxies, the JSON depth bound, and where
server commands are found."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from meshgate.config import collect, find_command, load


def test_trusted_proxies_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert load(None, None, environ={}).mesh.trusted_proxies == []
    pol = tmp_path / "meshgate.toml"
    pol.write_text('[mesh]\ntrusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1"]\n')
    mesh = load(None, pol, environ={}).mesh
    assert mesh.trusted_proxies == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    env = {"MESHGATE_TRUSTED_PROXIES": "192.168.0.0/16, 127.0.0.1/32"}
    assert load(None, pol, environ=env).mesh.trusted_proxies == ["192.168.0.0/16", "127.0.0.1/32"]


def test_bad_trusted_proxies_are_problems_that_name_the_value(tmp_path: Path) -> None:
    pol = tmp_path / "meshgate.toml"
    pol.write_text('[mesh]\ntrusted_proxies = ["10.0.0.1/8"]\n')
    _, problems = collect(None, pol, environ={})
    [p] = problems
    assert p.key == "mesh.trusted_proxies" and "'10.0.0.1/8' is not an IP network" in p.reason
    _, problems = collect(None, None, environ={"MESHGATE_TRUSTED_PROXIES": "proxy.local"})
    [p] = problems
    assert p.file == "environment MESHGATE_TRUSTED_PROXIES" and "'proxy.local'" in p.reason


def test_json_depth_bound_is_a_bounded_setting(tmp_path: Path) -> None:
    assert load(None, None, environ={}).mesh.max_json_depth == 64
    assert load(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": "16"}).mesh.max_json_depth == 16
    for bad in ("0", "100000", "deep"):
        _, problems = collect(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": bad})
        assert [p.key for p in problems] == ["mesh.max_json_depth"], bad


def test_commands_are_found_on_path_then_next_to_this_python(tmp_path: Path) -> None:
    tool = tmp_path / "my-server"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_command("my-server", str(tmp_path)) == str(tool)
    assert find_command("my-server", "/nonexistent") is None
    assert find_command(str(tool), "/nonexistent") == str(tool)  # a path is taken as it is
    # The interpreter's own directory (a venv's bin) is searched after PATH.
    here = Path(sys.executable).parent
    own = Path(sys.executable).name
    assert find_command(own, "/nonexistent") == str(here / own)
    on_path = shutil.which("sh", path=os.defpath)
    assert on_path is not None and find_command("sh", os.defpath) == on_path


def test_a_command_found_nowhere_names_both_places(tmp_path: Path) -> None:
    cfg = tmp_path / ".mcp.json"
    cfg.write_text('{"mcpServers": {"x": {"command": "meshgate-no-such-command"}}}')
    _, problems = collect(cfg, None, environ={"PATH": str(tmp_path)})
    [p] = problems
    assert p.key == "mcpServers.x.command"
    assert f"is not found on PATH nor in {Path(sys.executable).parent}" in p.reason
