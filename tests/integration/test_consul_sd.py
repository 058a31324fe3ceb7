"""Prometheus-style `consul_sd_configs` against the Consul-compatible API: a real scraper,
given the gateway as its Consul server, discovers a service registered through
`PUT /v1/agent/service/register` (a real HTTP service on loopback with /metrics and an HTTP
check) and scrapes it. The scrapers are Debian's packages: VictoriaMetrics (whose promscrape
reads Prometheus' configuration, consul_sd_configs included) and Prometheus itself where its
build has Consul discovery (Debian 12's 2.42 is built without it: that case is skipped, and
says so)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

METRICS = b"# TYPE demo_requests_total counter\ndemo_requests_total 42\n"


@contextmanager
def metrics_service() -> Iterator[tuple[int, list[str]]]:
    """A real HTTP service on loopback: /metrics in Prometheus' text format, /health 200;
    yields its port and the paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = METRICS if self.path == "/metrics" else b"ok"
            self.send_response(200 if self.path in ("/metrics", "/health") else 404)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(server: str) -> str:
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: consul\n    consul_sd_configs:\n"
        f"      - server: '{server}'\n        services: [demo]\n"
    )


def _prometheus(config: Path, data: Path, port: int) -> list[str]:
    path = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    if path is None or promtool is None:
        raise RuntimeError("prometheus is missing: `make test` installs Debian's package")
    check = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    if "consul_sd_configs not found" in check.stdout + check.stderr:
        pytest.skip("this Prometheus is built without Consul discovery (Debian 12's 2.42 is)")
    assert check.returncode == 0, check.stdout + check.stderr
    return [
        path,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]


def _victoria_metrics(config: Path, data: Path, port: int) -> list[str]:
    path = shutil.which("victoria-metrics")
    if path is None:
        raise RuntimeError("victoria-metrics is missing: `make test` installs Debian's package")
    return [
        path,
        f"-promscrape.config={config}",
        f"-storageDataPath={data}",
        f"-httpListenAddr=127.0.0.1:{port}",
        # How often it re-reads the catalog besides its blocking queries (default 30 s).
        "-promscrape.consulSDCheckInterval=1s",
    ]


@pytest.mark.parametrize("scraper", [_victoria_metrics, _prometheus], ids=lambda f: f.__name__)
def test_consul_sd_discovers_and_scrapes_a_service_registered_through_the_consul_api(
    tmp_path: Path, scraper: Any
) -> None:
    with metrics_service() as (port, seen), run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        r = gw.http.put(
            "/v1/agent/service/register",
            json={
                "Name": "demo",
                "ID": "demo-1",
                "Address": "127.0.0.1",
                "Port": port,
                "Tags": ["metrics"],
                "Check": {"HTTP": f"http://127.0.0.1:{port}/health", "Interval": "1s"},
            },
        )
        assert r.status_code == 200, r.text
        config = tmp_path / "scrape.yml"
        config.write_text(_config(gw.url.removeprefix("http://")))
        api_port = _free_port()
        command = scraper(config, tmp_path / "tsdb", api_port)
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            targets: list[dict[str, Any]] = []
            while True:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/targets", timeout=5)
                    targets = answer.json()["data"]["activeTargets"]
                except (httpx.HTTPError, ValueError, KeyError):
                    targets = []
                if targets and targets[0]["health"] == "up":
                    break
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, f"never discovered and up: {targets}"
                time.sleep(0.5)
            labels = targets[0]["discoveredLabels"]
            assert labels["__address__"] == f"127.0.0.1:{port}"
            assert labels["__meta_consul_service"] == "demo"
            assert labels["__meta_consul_service_id"] == "demo-1"
            assert labels["__meta_consul_health"] == "passing"
            assert labels["__meta_consul_dc"] == "dc1"
            assert labels["__meta_consul_tags"] == ",metrics,"
            assert "/metrics" in seen and "/health" in seen
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
