"""Moving from Kong: a Kong declarative file whose upstream targets are real HTTP services on
loopback, imported with `meshgate import kong`, checked with `meshgate check-config`, and
served by a gateway: Kong-style paths and hosts reach the right service on the main port and
on the edge's own port, strip_path and preserve_host honoured, weights kept, a stopped target
taken out by the imported active check, unknown paths 404, and [auth] enforced."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from meshgate.testing.gateway import create_key
from tests.gateway import Gateway, Seen, recording_service, run_gateway
from tests.integration.test_auth_keys import bearer

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
_EDGE = re.compile(r"meshgate edge routes listening on (http://[^\s\"]+)")

KONG = """
_format_version: "3.0"
upstreams:
- name: orders.upstream
  algorithm: round-robin
  healthchecks:
    active:
      type: http
      http_path: /status
      timeout: 1
      healthy: {{interval: 0.2, successes: 1}}
      unhealthy: {{interval: 0.2, http_failures: 1, tcp_failures: 1, timeouts: 1}}
  targets:
  - {{target: "127.0.0.1:{a}", weight: 300}}
  - {{target: "127.0.0.1:{b}", weight: 100}}
services:
- name: orders
  host: orders.upstream
  path: /v1
  routes:
  - name: orders
    paths: [/orders]
- name: users
  url: http://127.0.0.1:{c}
  routes:
  - name: users
    hosts: ["*.example.com"]
    paths: [/]
    strip_path: false
    preserve_host: true
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def imported(tmp_path: Path, kong: str) -> str:
    """The meshgate.toml `meshgate import kong` writes, after `check-config` passed on it."""
    (tmp_path / "kong.yml").write_text(kong)
    done = cli("import", "kong", "kong.yml", "-o", "imported.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    checked = cli("check-config", "imported.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 error(s), 0 warning(s)" in checked.stdout
    return (tmp_path / "imported.toml").read_text()


def proxied(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if not s.path.endswith("/status")]  # not the checks


def wait_healthy(gw: Gateway, service: str, count: int) -> None:
    end = time.monotonic() + 20
    while True:
        view = gw.get(f"{API}/services/{service}").json()
        if sum(i["state"] == "healthy" for i in view["instances"]) == count:
            return
        assert time.monotonic() < end, view
        time.sleep(0.05)


def test_kong_routes_through_the_edge(tmp_path: Path) -> None:
    with ExitStack() as stack:
        a, seen_a = stack.enter_context(recording_service())
        b_alive = stack.enter_context(ExitStack())  # b is stopped half-way through
        b, seen_b = b_alive.enter_context(recording_service())
        c, seen_c = stack.enter_context(recording_service())
        port = {k: u.rsplit(":", 1)[1] for k, u in (("a", a), ("b", b), ("c", c))}
        policy = imported(tmp_path, KONG.format(**port)) + "\n[edge]\nport = 0\n"
        gw = stack.enter_context(run_gateway(tmp_path, {}, policy))
        wait_healthy(gw, "orders", 2)
        # strip_path: /orders is taken off, the service's path /v1 put on; the query stays.
        r = gw.get("/orders/items/7", params={"q": "1"})
        assert (r.status_code, r.text) == (200, "ok")
        (first,) = proxied(seen_a) + proxied(seen_b)
        assert first.path == "/v1/items/7?q=1"
        assert first.headers["x-forwarded-prefix"] == "/orders"
        assert first.headers["host"].startswith("127.0.0.1:")  # not preserved
        # Weights 300 and 100: three calls in four to the first target.
        for _ in range(199):
            assert gw.get("/orders/n").status_code == 200
        counts = Counter("a" if s in seen_a else "b" for s in proxied(seen_a) + proxied(seen_b))
        assert 130 <= counts["a"] <= 170 and counts["a"] + counts["b"] == 200, counts
        # A wildcard host, preserve_host, no stripping.
        r = gw.get("/profile/me", headers={"host": "shop.example.com"})
        assert r.status_code == 200
        (user,) = proxied(seen_c)
        assert (user.path, user.headers["host"]) == ("/profile/me", "shop.example.com")
        assert "x-forwarded-prefix" not in user.headers
        # Nothing routes /nowhere on the gateway's own name: the usual 404 problem.
        r = gw.get("/nowhere")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/problem+json")
        # meshgate's own paths are still its own.
        assert gw.get("/livez").status_code == 200
        assert gw.get(f"{API}/nope").status_code == 404
        # The edge's own port: the same table, nothing of meshgate's API.
        (edge,) = {m.group(1) for line in gw.log if (m := _EDGE.search(line))}
        with httpx.Client(base_url=edge, timeout=30) as client:
            assert client.get("/orders/x").status_code == 200
            r = client.get("/livez")
            assert r.status_code == 404 and r.json()["detail"] == "no route matches GET /livez"
            assert client.get("/x", headers={"host": "a.example.com"}).status_code == 200
        # A stopped target: the imported active check takes it out, and calls go on.
        b_alive.close()
        end = time.monotonic() + 20
        while True:
            view = gw.get(f"{API}/services/orders").json()
            states = {i["url"]: i["state"] for i in view["instances"]}
            if states[f"{b}/v1"] == "unhealthy":
                break
            assert time.monotonic() < end, states
            time.sleep(0.05)
        assert states[f"{a}/v1"] == "healthy"
        before = len(proxied(seen_a))
        for _ in range(20):
            assert gw.get("/orders/after").status_code == 200
        assert len(proxied(seen_a)) == before + 20
        assert len(proxied(seen_b)) == counts["b"]


AUTH = """
[auth]

[roles.orders]
allow = ["http:orders GET"]
"""


def test_auth_is_enforced_on_the_edge(tmp_path: Path) -> None:
    with ExitStack() as stack:
        (a, seen_a), (b, seen_b), (c, seen_c) = (
            stack.enter_context(recording_service()) for _ in range(3)
        )
        port = {k: u.rsplit(":", 1)[1] for k, u in (("a", a), ("b", b), ("c", c))}
        policy = imported(tmp_path, KONG.format(**port)) + AUTH
        with run_gateway(tmp_path, {}, policy) as gw:
            key = create_key(tmp_path / "data", "shop", "--role", "orders")
            r = gw.get("/orders/x")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            r = gw.get("/orders/x", headers=bearer(key))
            assert r.status_code == 200, r.text
            # The route's service is what policy names: POST and another service are refused.
            r = gw.http.post("/orders/x", headers=bearer(key), content=b"{}")
            assert r.status_code == 403, r.text
            r = gw.get("/p", headers={**bearer(key), "host": "shop.example.com"})
            assert r.status_code == 403, r.text
            assert proxied(seen_c) == []
            # The gateway's credential is not passed on to the service.
            (sent,) = proxied(seen_a) + proxied(seen_b)
            assert "authorization" not in sent.headers


def test_import_refuses_a_bad_file_with_where(tmp_path: Path) -> None:
    (tmp_path / "kong.yml").write_text('_format_version: "3.0"\nservices:\n- name: [oops\n')
    done = cli("import", "kong", "kong.yml", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: kong.yml:4:1: invalid YAML"), done.stderr
    done = cli("import", "kong", "missing.yml", cwd=tmp_path)
    assert done.returncode == 2 and "cannot read missing.yml" in done.stderr
    # What is not imported is listed on stderr; the fragment goes to stdout.
    (tmp_path / "kong.yml").write_text(
        '_format_version: "3.0"\nservices:\n- name: a\n  url: http://a.internal\n'
        "  plugins:\n  - name: cors\n"
    )
    done = cli("import", "kong", "kong.yml", cwd=tmp_path)
    assert done.returncode == 0
    assert "note: services[0].plugins[0]: plugin cors: not mapped" in done.stderr
    assert '[[mesh.services]]\nname = "a"\nurl = "http://a.internal"' in done.stdout


def test_an_edge_port_beyond_loopback_needs_auth(tmp_path: Path) -> None:
    (tmp_path / "meshgate.toml").write_text(
        '[[mesh.services]]\nname = "a"\nurl = "http://127.0.0.1:9"\n\n'
        '[[routes]]\nservice = "a"\npaths = ["/a"]\n\n[edge]\nport = 0\nhost = "0.0.0.0"\n'
    )
    done = cli(
        "serve", "--policy", "meshgate.toml", "--port", "0", "--data-dir", "data", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr, done.stderr
