"""The deploy/ files against the real thing: promtool checks and unit-tests the alert rules, and a
real Prometheus (Debian's package, which `make test` installs) scrapes a running gateway and
loads the rules."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import REPO, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: `make test` installs Debian's prometheus package")
    return path


def test_the_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    for args, cwd in (
        (["check", "config", "prometheus.yml"], PROMETHEUS_DIR),
        (["check", "rules", "alerts.yml"], PROMETHEUS_DIR),
        (["test", "rules", "alerts_test.yml"], PROMETHEUS_DIR),
    ):
        r = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "SUCCESS" in r.stdout + r.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, checked by promtool as the
    expression of a recording rule."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "meshgate.json").read_text())
    fill = {"$__rate_interval": "5m", "$node": ".*", "$service": ".*"}
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                for variable, value in fill.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, (panel["title"], expr)
                exprs.append(expr)
    assert len(exprs) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    r = subprocess.run(
        [_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _query(api: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def test_a_real_prometheus_scrapes_the_gateway_and_loads_the_rules(tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    with run_gateway(tmp_path, {"fault": fault_server()}, node="scraped") as gw:
        for _ in range(5):
            assert gw.call("fault", "echo", {"text": "x"}).status_code == 200
        target = gw.url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {PROMETHEUS_DIR / 'alerts.yml'}\n"
            "scrape_configs:\n  - job_name: meshgate\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        port = _free_port()
        api = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    found = _query(api, 'meshgate_build_info{job="meshgate"}')
                except httpx.HTTPError:
                    found = []
                if found:
                    break
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "Prometheus never scraped the gateway"
                time.sleep(0.5)
            assert found[0]["metric"]["node"] == "scraped"
            assert _query(api, 'up{job="meshgate"}')[0]["value"][1] == "1"
            calls = _query(
                api, 'sum(meshgate_call_duration_seconds_count{service="fault",tool="echo"})'
            )
            assert float(calls[0]["value"][1]) == 5
            while True:  # every rule loaded and evaluated without error
                groups = httpx.get(f"{api}/api/v1/rules", timeout=5).json()["data"]["groups"]
                loaded = [r for g in groups if g["name"] == "meshgate" for r in g["rules"]]
                if len(loaded) >= 9 and all(r["health"] == "ok" for r in loaded):
                    break
                assert time.monotonic() < deadline, loaded
                time.sleep(0.5)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
