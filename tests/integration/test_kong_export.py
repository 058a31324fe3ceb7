"""`meshgate export kong` against a running gateway: its registered HTTP services become Kong
services behind its node, and the file, read back by `meshgate import kong` into a second
gateway (which follows Kong's path rules: prefix, strip_path, the service's path), sends
`/NAME/...` through the first gateway's call path to the real service."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from tests.gateway import Gateway, recording_service, run_gateway

API = "/api/v1/mesh/v2"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )


def healthy(gw: Gateway, name: str) -> None:
    end = time.monotonic() + 30
    while True:
        view = gw.get(f"{API}/services/{name}").json()
        if view.get("instances") and all(i["state"] == "healthy" for i in view["instances"]):
            return
        assert time.monotonic() < end, view
        time.sleep(0.05)


def test_exported_routes_reach_the_service_through_meshgate(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ExitStack() as stack:
        url, seen = stack.enter_context(recording_service())
        first = stack.enter_context(run_gateway(tmp_path / "a", {}))
        r = first.http.post(
            f"{API}/register", json={"name": "orders", "url": url, "check": {"type": "tcp"}}
        )
        assert r.status_code == 201, r.text
        healthy(first, "orders")
        done = cli("export", "kong", "--url", first.url, "-o", "kong.yml", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "1 service(s), 0 MCP server(s), 1 node(s)" in done.stderr
        data: dict[str, Any] = yaml.safe_load((tmp_path / "kong.yml").read_text())
        (upstream,) = data["upstreams"]
        assert [t["target"] for t in upstream["targets"]] == [first.url.split("//")[1]]
        assert [s["name"] for s in data["services"]] == ["orders"]
        # Read back: no error, and a gateway serving what was read sends /orders/... on.
        done = cli("import", "kong", "kong.yml", "-o", "imported.toml", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        policy = (tmp_path / "imported.toml").read_text()
        second = stack.enter_context(run_gateway(tmp_path / "b", {}, policy, node="edge"))
        healthy(second, "orders")
        r = second.get("/orders/items/7", params={"q": "1"})
        assert (r.status_code, r.text) == (200, "ok")
        assert "/items/7?q=1" in [s.path for s in seen]


def test_export_from_the_configuration_alone(tmp_path: Path) -> None:
    (tmp_path / "meshgate.toml").write_text(
        '[mesh]\nport = 9911\n\n[[mesh.services]]\nname = "billing"\n'
        'url = "http://127.0.0.1:9\n"\n\n[services.reports]\n'.replace('\n"', '"')
    )
    done = cli("export", "kong", "--policy", "meshgate.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    assert [t["target"] for t in data["upstreams"][0]["targets"]] == ["127.0.0.1:9911"]
    assert [s["name"] for s in data["services"]] == ["billing", "reports"]
    assert "is on loopback" in done.stderr  # Kong elsewhere would not reach it


def test_export_refuses_a_gateway_it_cannot_reach_and_a_bad_policy(tmp_path: Path) -> None:
    done = cli("export", "kong", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2 and "cannot reach the gateway" in done.stderr
    (tmp_path / "bad.toml").write_text("[mesh]\nport = -1\n")
    done = cli("export", "kong", "--policy", "bad.toml", cwd=tmp_path)
    assert done.returncode == 2 and "mesh.port" in done.stderr
