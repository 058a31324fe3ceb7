"""The HTTP proxy at its edges: paths that try to leave a service's base path, forwarding
headers from trusted and untrusted peers, and hashing strategies keyed by the real client."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


class Backend:
    """A real HTTP service on loopback that records every request it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "name": backend.name,
                }
                backend.seen.append(seen)
                data = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def backends(*names: str) -> Iterator[list[Backend]]:
    started = [Backend(n) for n in names]
    threads = [threading.Thread(target=b.server.serve_forever, daemon=True) for b in started]
    for t in threads:
        t.start()
    try:
        yield started
    finally:
        for b in started:
            b.server.shutdown()
            b.server.server_close()
        for t in threads:
            t.join(10)


def register(gw: Gateway, name: str, url: str, id_: str | None = None) -> None:
    # A TCP check: the backend's record holds only what the proxy sent.
    body: dict[str, Any] = {"name": name, "url": url, "check": {"type": "tcp", "interval_s": 0.2}}
    if id_ is not None:
        body["id"] = id_
    r = gw.http.post(f"{API}/register", json=body)
    assert r.status_code in (200, 201), r.text
    end = time.monotonic() + 30
    while True:
        view = gw.get(f"{API}/services/{name}").json()
        if sum(i["state"] == "healthy" for i in view["instances"]) == len(view["instances"]):
            return
        assert time.monotonic() < end, view
        time.sleep(0.05)


def raw_request(gw: Gateway, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    """Send the request target byte for byte (httpx would normalise dot segments)."""
    parts = urlsplit(gw.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(method, target, body=body or None)
        r = conn.getresponse()
        data = r.read()
        ctype = r.getheader("content-type") or ""
        return r.status, json.loads(data) if "json" in ctype else data.decode(errors="replace")
    finally:
        conn.close()


CLIMBS = [
    "../secret",
    "a/../../secret",
    "..",
    "./secret",
    "%2e%2e/secret",
    "%2E%2E/secret",
    ".%2e/secret",
    "%2e./secret",
    "..%2fsecret",
    "%2e%2e%2fsecret",
    "a%2f..%2f..%2fsecret",
    "..\\secret",
    "a\\..\\..\\secret",
    "..%5csecret",
    "%2e%2e%5csecret",
    "%252e%252e/secret",
    "%25252e%25252e%25252fsecret",
    "..;/secret",
    "a/..;x/../secret",
]


def test_paths_that_climb_out_of_the_base_path_are_refused(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw, backends("files") as [files]:
        register(gw, "files", files.url + "/base")
        call = f"{API}/call/files/"
        for target in CLIMBS:
            for method, body in (("GET", b""), ("POST", b"payload"), ("DELETE", b"")):
                status, problem = raw_request(gw, method, call + target, body)
                assert status == 400, (method, target, status, problem)
                assert problem["type"].endswith("/invalid-input"), problem
                assert "'..'" in problem["detail"], problem
        assert files.seen == []  # not one of them reached the service

        # What stays under the base path goes through, percent-escapes as the client sent them.
        ok = {
            "ok": "/base/ok",
            "ok/a%2Fb?x=1": "/base/ok/a%2Fb?x=1",
            "ok/a%3Fb": "/base/ok/a%3Fb",
            "ok/..data/x.": "/base/ok/..data/x.",
            "ok/%2e%2edata": "/base/ok/%2e%2edata",
            "ok//twice": "/base/ok//twice",
        }
        for target, expected in ok.items():
            status, seen = raw_request(gw, "GET", call + target)
            assert status == 200, (target, seen)
            assert seen["path"] == expected
        assert [s["path"] for s in files.seen] == list(ok.values())
        assert not any("Traceback" in line for line in gw.log)


def test_forwarding_headers_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    # The test connects from 127.0.0.1 (a client) and from 127.0.0.2 (the trusted proxy).
    policy = '[mesh]\ntrusted_proxies = ["127.0.0.2/32"]\n'
    spoof = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
        "X-Forwarded-Port": "443",
        "Forwarded": "for=203.0.113.9;proto=https",
        "X-Real-IP": "203.0.113.9",
    }
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw, backends("svc") as [svc]:
        register(gw, "svc", svc.url)
        host = urlsplit(gw.url).netloc

        seen = gw.get(f"{API}/call/svc/h", headers=spoof).json()["headers"]
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == host
        for name in ("forwarded", "x-real-ip", "x-forwarded-port"):
            assert name not in seen, seen

        with httpx.Client(base_url=gw.url, transport=proxy, timeout=30) as via_proxy:
            seen = via_proxy.get(f"{API}/call/svc/h", headers=spoof).json()["headers"]
            assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.2"
            assert seen["x-forwarded-proto"] == "https"
            assert seen["x-forwarded-host"] == "shop.example"
            assert seen["x-forwarded-port"] == "443"
            assert seen["forwarded"] == "for=203.0.113.9;proto=https"
            # A trusted proxy that sends none: the gateway's own view.
            seen = via_proxy.get(f"{API}/call/svc/h").json()["headers"]
            assert seen["x-forwarded-for"] == "127.0.0.2"
            assert seen["x-forwarded-proto"] == "http"


def test_hashing_strategies_key_on_the_real_client(tmp_path: Path) -> None:
    policy = """
[mesh]
trusted_proxies = ["127.0.0.2/32"]
[services.byip]
strategy = "consistent_hash"
[services.byaddr]
strategy = "ip_hash"
[services.bysession]
strategy = "consistent_hash"
hash_key = "session"
[services.byuser]
strategy = "consistent_hash"
hash_key = "arg:user"
"""
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")
    names = ("byip", "byaddr", "bysession", "byuser")
    with (
        run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw,
        backends("a", "b") as [a, b],
        httpx.Client(base_url=gw.url, transport=proxy, timeout=30) as via_proxy,
    ):
        for name in names:
            register(gw, name, a.url, f"{name}-a")
            register(gw, name, b.url, f"{name}-b")

        def landed(client: httpx.Client, path: str, **kw: Any) -> str:
            r = client.get(f"{API}/call/{path}", **kw)
            assert r.status_code == 200, r.text
            name: str = r.json()["name"]
            return name

        for name in ("byip", "byaddr"):
            # One client, whatever X-Forwarded-For it makes up: one instance.
            hit = {
                landed(gw.http, f"{name}/x", headers={"X-Forwarded-For": f"10.0.0.{i}"})
                for i in range(30)
            }
            assert len(hit) == 1, (name, hit)
            # Behind the trusted proxy, clients are told apart by its X-Forwarded-For...
            spread = {
                landed(via_proxy, f"{name}/x", headers={"X-Forwarded-For": f"10.0.0.{i}"})
                for i in range(40)
            }
            assert spread == {"a", "b"}, name
            # ...and each of them stays on its instance.
            for i in range(5):
                xff = {"X-Forwarded-For": f"10.1.0.{i}, 127.0.0.2"}  # a second trusted hop
                once = {landed(via_proxy, f"{name}/x", headers=xff) for _ in range(10)}
                assert len(once) == 1, (name, i, once)

        sessions = [f"s{i}" for i in range(40)]
        by_session = {
            s: landed(gw.http, "bysession/x", headers={"X-Meshgate-Session": s}) for s in sessions
        }
        assert set(by_session.values()) == {"a", "b"}
        for s in sessions[:5]:
            again = {
                landed(gw.http, "bysession/x", headers={"X-Meshgate-Session": s}) for _ in range(5)
            }
            assert again == {by_session[s]}

        users = {u: landed(gw.http, f"byuser/x?user=u{u}") for u in range(40)}
        assert set(users.values()) == {"a", "b"}
        assert {landed(gw.http, "byuser/x?user=u1&z=2") for _ in range(10)} == {users[1]}


def test_mcp_calls_hash_on_the_client_a_trusted_proxy_names(tmp_path: Path) -> None:
    policy = """
[mesh]
trusted_proxies = ["127.0.0.2/32"]
[servers.fault]
instances = 2
strategy = "ip_hash"
"""
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")
    with (
        run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw,
        httpx.Client(base_url=gw.url, transport=proxy, timeout=30) as via_proxy,
    ):
        gw.wait_for("fault", lambda v: all(i["state"] == "healthy" for i in v["instances"]))

        def pid(client: httpx.Client, xff: str) -> int:
            r = client.post(
                "/api/v1/mcp/servers/fault/tools/pid",
                json={"arguments": {}},
                headers={"X-Forwarded-For": xff},
            )
            assert r.status_code == 200, r.text
            return int(r.json()["content"][0]["text"])

        # Not a trusted proxy: its X-Forwarded-For is not believed, one client, one instance.
        assert len({pid(gw.http, f"10.0.0.{i}") for i in range(30)}) == 1
        assert len({pid(via_proxy, f"10.0.0.{i}") for i in range(40)}) == 2
        assert len({pid(via_proxy, "10.9.9.9") for _ in range(10)}) == 1
