"""Registration cannot make the gateway reach what it alone can reach: cloud metadata,
link-local addresses, its own API; and credentials in a registered URL are never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import Gateway, run_gateway
from tests.integration.test_call_path import closed_port
from tests.integration.test_mesh_registry import wait_service

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


def refused(gw: Gateway, body: dict[str, Any], rule: str) -> None:
    r = gw.http.post(f"{API}/register", json={"check": {"type": "tcp"}, **body})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert rule in json.dumps(r.json()), r.text
    kind = "invalid-arguments" if "http:// or https://" in rule else "registration-refused"
    assert r.json()["type"].endswith(f"/{kind}"), r.text


def test_registrations_that_would_reach_what_only_the_gateway_can_are_refused(
    tmp_path: Path,
) -> None:
    with run_gateway(tmp_path, {}) as gw:
        port = gw.url.rsplit(":", 1)[1]
        cases: list[tuple[dict[str, Any], str]] = [
            ({"url": "http://169.254.169.254/latest/meta-data/"}, "link-local / cloud metadata"),
            ({"url": "http://169.254.10.1:8080"}, "link-local / cloud metadata"),
            ({"url": "http://[fd00:ec2::254]"}, "link-local / cloud metadata"),
            ({"url": "http://100.100.100.200"}, "link-local / cloud metadata"),
            ({"address": "fe80::1", "port": 80}, "link-local / cloud metadata"),
            ({"address": "169.254.169.254", "port": 80}, "link-local / cloud metadata"),
            ({"url": "http://metadata.google.internal/"}, "cloud metadata service name"),
            ({"url": "http://0.0.0.0:9000"}, "unspecified"),
            ({"url": "http://[::]:9000"}, "unspecified"),
            ({"url": "http://224.0.0.1:9000"}, "multicast / broadcast"),
            ({"url": "http://255.255.255.255:9000"}, "multicast / broadcast"),
            ({"url": f"{gw.url}{API}/call/loop"}, "own listener"),
            ({"url": f"http://localhost:{port}"}, "own listener"),
            ({"address": "127.0.0.2", "port": int(port)}, "own listener"),
            ({"url": "file:///etc/passwd"}, "http:// or https://"),
            ({"url": "gopher://127.0.0.1:70/_x"}, "http:// or https://"),
            ({"address": "x@169.254.169.254", "port": 80}, "not a host name or an IP address"),
            ({"address": "127.0.0.1/x", "port": 80}, "not a host name or an IP address"),
            ({"url": "http://no-such-host.invalid"}, "does not resolve"),
        ]
        for body, rule in cases:
            refused(gw, {"name": "evil", **body}, rule)
        assert gw.get(f"{API}/services/evil").status_code == 404
        # Loopback at another port (where local agents run) is still allowed.
        r = gw.http.post(
            f"{API}/register",
            json={
                "name": "ok",
                "url": f"http://localhost:{closed_port()}",
                "check": {"type": "tcp"},
            },
        )
        assert r.status_code == 201, r.text


def test_configured_networks_deny_and_allow(tmp_path: Path) -> None:
    policy = """
[mesh]
registration_allow_loopback = false
registration_denied_networks = ["192.0.2.0/24"]
"""
    with run_gateway(tmp_path, {}, policy) as gw:
        # A name is resolved and what it resolves to is checked.
        refused(gw, {"name": "s", "url": f"http://localhost:{closed_port()}"}, "loopback address")
        refused(gw, {"name": "s", "address": "127.0.0.1", "port": 9}, "loopback address")
        refused(gw, {"name": "s", "url": "http://192.0.2.7"}, "registration_denied_networks")
    allow = '[mesh]\nregistration_allowed_networks = ["10.0.0.0/8"]\n'
    (tmp_path / "b").mkdir()
    with run_gateway(tmp_path / "b", {}, allow) as gw:
        refused(gw, {"name": "s", "url": "http://127.0.0.1:9"}, "not in mesh.registration_allowed")
        r = gw.http.post(
            f"{API}/register",
            json={"name": "s", "url": "http://10.1.2.3:9", "check": {"type": "tcp"}},
        )
        assert r.status_code == 201, r.text


def test_a_stored_or_static_registration_the_policy_refuses_is_dropped_on_load(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with run_gateway(tmp_path, {}) as gw:
        r = gw.http.post(
            f"{API}/register", json={"name": "local", "url": url, "check": {"type": "tcp"}}
        )
        assert r.status_code == 201, r.text
    policy = f"""
[mesh]
registration_allow_loopback = false

[[mesh.services]]
name = "meta"
url = "http://169.254.169.254"
check = {{type = "tcp"}}

[[mesh.services]]
name = "fine"
url = "http://10.9.9.9:{closed_port()}"
check = {{type = "tcp"}}
"""
    with run_gateway(tmp_path, {}, policy) as gw:
        assert gw.get(f"{API}/services/local").status_code == 404
        assert gw.get(f"{API}/services/meta").status_code == 404
        assert gw.get(f"{API}/services/fine").status_code == 200
        log = "\n".join(gw.log)
        assert "stored registration local-" in log and "loopback address" in log
        assert "static service meta-" in log and "link-local / cloud metadata" in log
    # Dropped from the store too: allowed again, it does not come back.
    with run_gateway(tmp_path, {}, "") as gw:
        assert gw.get(f"{API}/services/local").status_code == 404


def test_credentials_in_a_registered_url_are_never_shown(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {}) as gw:
        url = f"http://agent:s3cret@127.0.0.1:{closed_port()}"
        r = gw.http.post(
            f"{API}/register",
            json={"name": "svc", "url": url, "check": {"type": "tcp"}, "depends_on": ["x"]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["url"] == url.replace("s3cret", "***")
        for path in ("/services", "/services/svc", "/topology", "/health"):
            text = gw.get(f"{API}{path}").text
            assert "s3cret" not in text, (path, text)
        assert (
            gw.get(f"{API}/services/svc")
            .json()["instances"][0]["url"]
            .startswith("http://agent:***@127.0.0.1:")
        )
        # A failed MCP check's error names the URL: redacted too.
        mcp = {"type": "mcp", "path": "/mcp", "interval_s": 0.2}
        r = gw.http.post(f"{API}/register", json={"name": "m", "url": url, "check": mcp})
        assert r.status_code == 201, r.text
        view = wait_service(gw, "m", lambda v: v["instances"][0]["last_check"] is not None)
        error = view["instances"][0]["last_check"]["error"]
        assert "MCP check failed" in error and "agent:***@" in error, error
        assert "s3cret" not in gw.get(f"{API}/services").text
        assert "agent:***@" in "\n".join(gw.log)
        assert "s3cret" not in "\n".join(gw.log)
