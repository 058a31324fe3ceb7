"""deploy/compose.yaml and the files it mounts, checked without starting it (its images come
from registries): parsed as YAML, every mounted file present, the gateways' settings loaded by
meshgate's own loader, HAProxy's and Prometheus' configurations checked by haproxy and
promtool, Grafana's provisioning pointed at what compose mounts; and Docker Compose's own
`config` (the one `make compose` pins, tests/tools/compose.txt)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.config import load
from tests.gateway import REPO

pytestmark = pytest.mark.timeout(120)

DEPLOY = REPO / "deploy"
SECRET = "compose-test-secret-0123456789"
GATEWAYS = ("gw1", "gw2")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment with ${VAR:?...} / ${VAR:-default} as compose fills them."""
    values = {"MESHGATE_CLUSTER_SECRET": SECRET}

    def fill(m: re.Match[str]) -> str:
        return values.get(m.group(1), m.group(3) or "")

    env: dict[str, str] = service.get("environment", {})
    return {k: re.sub(r"\$\{(\w+)(:[-?](.*?))?\}", fill, str(v)) for k, v in env.items()}


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative ones from deploy/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (DEPLOY / source).resolve()
    return out


def test_the_compose_file_has_the_cluster_and_mounts_what_exists() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "redis",
        *GATEWAYS,
        "prometheus-key",
        "haproxy",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name} mounts {source} on {target}: missing"
    for gw in GATEWAYS:
        env = _environment(services[gw])
        assert env["MESHGATE_NODE_ID"] == gw
        assert env["MESHGATE_ADVERTISE_URL"] == f"http://{gw}:8800"
        assert env["MESHGATE_REGISTRY"] == env["MESHGATE_QUEUE"] == "redis://redis:6379/0"
        assert services[gw]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Only HAProxy is published beyond loopback.
    published = {n: s["ports"] for n, s in services.items() if "ports" in s}
    assert published["haproxy"] == ["${MESHGATE_PORT:-8800}:8800"]
    assert all(
        p.startswith("127.0.0.1:") for n, ps in published.items() if n != "haproxy" for p in ps
    )


def test_the_gateways_settings_load_as_meshgate_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    for gw in GATEWAYS:
        binds = _binds(services[gw])
        etc = binds["/etc/meshgate"]
        with monkeypatch.context() as m:
            for key, value in _environment(services[gw]).items():
                m.setenv(key, value)
            m.setenv("MESHGATE_HOST", "0.0.0.0")  # the image's
            settings = load(etc / "mcp.json", etc / "meshgate.toml")
        auth = settings.security.auth
        assert auth is not None
        assert auth.enabled
        assert auth.api_keys
        assert settings.shared_registry
        assert settings.advertise_url() == f"http://{gw}:8800"
        assert settings.mesh.cluster_secret == SECRET
        hosts = set(settings.mesh.allowed_hosts or ())
        # Peers and Prometheus by service name, HAProxy's check and the image's by 127.0.0.1.
        assert {*GATEWAYS, "127.0.0.1", "localhost"} <= hosts
        assert "/metrics" not in auth.public_paths
        # Prometheus' key (the prometheus-key service) may read /metrics and no more.
        assert settings.security.roles["metrics"].allow == ("mesh:discover",)
        haproxy_ip = services["haproxy"]["networks"]["mesh"]["ipv4_address"]
        assert settings.mesh.trusted_proxies == [f"{haproxy_ip}/32"]
        assert set(settings.servers) == {"time"}


def test_haproxy_balances_the_gateways() -> None:
    cfg = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+)$", cfg, re.M)
    assert servers == [(gw, f"{gw}:8800") for gw in GATEWAYS]
    assert re.search(r"^\s*balance roundrobin$", cfg, re.M)
    assert "uri /readyz" in cfg
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is missing (.ci/run installs Debian's package)")
    r = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "compose" / "haproxy.cfg")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_scrapes_both_gateways_and_grafana_is_provisioned() -> None:
    services = _compose()["services"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "meshgate"  # the alerts and the dashboard select on it
    assert job["static_configs"][0]["targets"] == [f"{gw}:8800" for gw in GATEWAYS]
    assert "--config.file=/etc/prometheus/compose.yml" in services["prometheus"]["command"]
    # Prometheus reads the key the prometheus-key service writes into their shared volume.
    key = Path(job["authorization"]["credentials_file"])
    (volume,) = [v for v in services["prometheus"]["volumes"] if v.startswith("prometheus-key:")]
    assert volume == f"prometheus-key:{key.parent}:ro"
    maker = services["prometheus-key"]
    (mount,) = [v for v in maker["volumes"] if v.startswith("prometheus-key:")]
    assert f"key={mount.split(':')[1]}/{key.name}\n" in maker["command"][0]
    assert maker["restart"] == "no"
    condition = services["prometheus"]["depends_on"]["prometheus-key"]["condition"]
    assert condition == "service_completed_successfully"
    promtool = shutil.which("promtool")
    if promtool is not None:  # the key file exists only in the container: syntax only
        r = subprocess.run(
            [promtool, "check", "config", "--syntax-only", "compose.yml"],
            cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr

    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "meshgate.yaml").read_text())[
        "providers"
    ]
    binds = _binds(services["grafana"])
    dashboard = binds[f"{provider['options']['path']}/meshgate.json"]
    assert dashboard == DEPLOY / "grafana" / "meshgate.json"
    assert binds["/etc/grafana/provisioning"] == provisioning


def _compose_v2() -> list[str] | None:
    """Docker Compose 2 or later: the one `make compose` installs (MESHGATE_COMPOSE), else
    `docker compose` or `docker-compose` on PATH (Debian's `docker-compose` is Compose 1)."""
    pinned = os.environ.get("MESHGATE_COMPOSE", "")
    candidates = [[pinned]] if pinned and os.access(pinned, os.X_OK) else []
    for name, *sub in (["docker", "compose"], ["docker-compose"]):
        if (path := shutil.which(name)) is not None:
            candidates.append([path, *sub])
    for command in candidates:
        r = subprocess.run([*command, "version", "--short"], capture_output=True, text=True,
                           timeout=30)  # fmt: skip
        major = r.stdout.strip().lstrip("v").split(".")[0]
        if r.returncode == 0 and major.isdigit() and int(major) >= 2:
            return command
    return None


def test_docker_compose_config_accepts_it() -> None:
    command = _compose_v2()
    if command is None:
        pytest.skip("no Docker Compose 2 or later here (make compose installs one)")
    compose = ["--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml"), "config"]
    # compose fills ${...} from the environment: only the test's choices go in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHGATE_", "GRAFANA_"))}
    env = {k: v for k, v in env.items() if not k.endswith("_IMAGE")}
    r = subprocess.run([*command, *compose], capture_output=True, text=True, timeout=60,
                       env={**env, "MESHGATE_CLUSTER_SECRET": SECRET})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["name"] == "meshgate"
    # Without a cluster secret compose refuses, naming it.
    r = subprocess.run([*command, *compose], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "MESHGATE_CLUSTER_SECRET" in r.stderr
