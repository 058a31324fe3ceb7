"""HTTPS and client certificates at the listener; TLS to upstreams (remote MCP servers, HTTP
services) and to Redis. Certificates come from a throw-away CA; every server is real."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from meshgate.api.listener import ListenerBounds, protocol_class
from meshgate.config.settings import MeshSettings
from meshgate.config.tls import server_context
from meshgate.security.client_cert import client_certificate
from meshgate.testing.certs import CertFiles, TestCA
from meshgate.testing.gateway import GatewayProcess, start_gateway
from meshgate.testing.redis_server import RedisServer
from tests.gateway import fault_server, serve_app

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


def _tls_args(server: CertFiles, client_ca: Path | None = None, mode: str = "") -> list[str]:
    args = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if client_ca is not None:
        args += ["--tls-client-ca", str(client_ca)]
    if mode:
        args += ["--tls-client-cert", mode]
    return args


@contextmanager
def gateway(
    workdir: Path, servers: dict[str, Any], policy: str = "", **kw: Any
) -> Iterator[GatewayProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(workdir, servers, policy, **kw)
    try:
        yield gw
    finally:
        gw.stop()


def test_https_with_required_client_certificates(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    agent = ca.issue("agent", "agent.example")
    with gateway(
        tmp_path / "gw",
        {},
        args=_tls_args(ca.server(), ca.ca_file),
        tls=ca.client_context(agent),
    ) as gw:
        assert gw.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=ca.client_context(agent)) as c:
            assert c.get(gw.url + f"{API}/health").status_code == 200
        # No certificate, or one of another CA: the handshake is refused, nothing is served.
        stranger = TestCA(tmp_path / "other").issue("stranger", "agent.example")
        for ctx in (ca.client_context(), ca.client_context(stranger)):
            with httpx.Client(verify=ctx) as c, pytest.raises(httpx.TransportError):
                c.get(gw.url + f"{API}/health")
        # Plain HTTP on the HTTPS port gets no answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(gw.url.replace("https", "http") + f"{API}/health")


def test_optional_client_certificates_let_clients_without_one_in(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    with gateway(
        tmp_path / "gw",
        {},
        args=_tls_args(ca.server(), ca.ca_file, "optional"),
        tls=ca.client_context(),
    ) as gw:
        for ctx in (ca.client_context(), ca.client_context(ca.issue("agent", "a.example"))):
            with httpx.Client(verify=ctx) as c:
                assert c.get(gw.url + f"{API}/health").status_code == 200


def _serve(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ],
        cwd=tmp_path,
        env={**os.environ, "MESHGATE_DATA_DIR": str(tmp_path / "data"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def test_bad_tls_files_stop_the_start_with_a_clear_error(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    server, other = ca.server(), ca.issue("other", "other.example")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (
            ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(server.key)],
            {},
            "tls_cert: " + str(tmp_path / "missing.pem") + " is not a file",
        ),
        (
            ["--tls-cert", str(server.cert), "--tls-key", str(other.key)],
            {},
            "the key does not belong to the certificate",
        ),
        (["--tls-cert", str(garbage), "--tls-key", str(garbage)], {}, "not a PEM certificate"),
        (_tls_args(server, garbage), {}, "tls_client_ca: " + str(garbage) + " is not a PEM CA"),
        (["--tls-cert", str(server.cert)], {}, "tls_cert and tls_key go together"),
        (["--tls-client-ca", str(ca.ca_file)], {}, "tls_client_ca needs tls_cert"),
        (
            [],
            {"MESHGATE_UPSTREAM_CA_FILE": str(tmp_path / "nope.pem")},
            "upstream_ca_file: " + str(tmp_path / "nope.pem") + " is not a file",
        ),
        (
            [],
            {"MESHGATE_TLS_CLIENT_CERT": "sometimes"},
            "MESHGATE_TLS_CLIENT_CERT",
        ),
    ]
    for args, env, message in cases:
        code, stderr = _serve(tmp_path, args, env)
        assert code == 2, (args, env, stderr)
        assert message in stderr, (args, env, stderr)
        assert "listening" not in stderr


@contextmanager
def _listener(ctx: ssl.SSLContext | None) -> Iterator[str]:
    """The gateway's listener (protocol and TLS) in front of an app that answers with the
    client certificate it sees: no route of the gateway shows it yet."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cert = client_certificate(scope)
        body = json.dumps(
            {
                "cert": None if cert is None else cert.__dict__ | {"sans": list(cert.sans)},
                "tls_version": scope.get("extensions", {}).get("tls", {}).get("tls_version"),
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    scheme = "http" if ctx is None else "https"
    with serve_app(app, scheme=scheme, http=protocol_class(ListenerBounds(), ctx)) as url:
        yield url


def _der(cert_chain: Path) -> bytes:
    pem = cert_chain.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:end])


def test_the_client_certificate_reaches_the_app(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    server = ca.server()
    agent = ca.issue("agent", "agent.example", "ops@example.org", common_name="agent-1")
    mesh = MeshSettings(
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(ca.ca_file),
        tls_client_cert="optional",
    )
    with _listener(server_context(mesh)) as url:
        with httpx.Client(verify=ca.client_context(agent)) as c:
            seen = c.get(url).json()
        assert seen["tls_version"] in (0x0303, 0x0304)
        cert = seen["cert"]
        assert cert["common_name"] == "agent-1"
        assert cert["subject"].startswith("CN=agent-1,")
        assert cert["sans"] == ["DNS:agent.example", "email:ops@example.org"]
        assert cert["fingerprint_sha256"] == hashlib.sha256(_der(agent.cert)).hexdigest()
        with httpx.Client(verify=ca.client_context()) as c:
            assert c.get(url).json()["cert"] is None  # TLS without a certificate
    with _listener(None) as url:
        assert httpx.get(url).json() == {"cert": None, "tls_version": None}


def test_upstreams_over_https_with_a_ca_bundle_and_a_client_certificate(tmp_path: Path) -> None:
    """Gateway B calls gateway A, which serves HTTPS and requires client certificates, as a
    remote MCP server and as an HTTP service: it works only with B's CA bundle and its
    certificate."""
    ca = TestCA(tmp_path / "certs")
    node_b = ca.issue("node-b", "node-b.example")
    with gateway(
        tmp_path / "a",
        {"fault": fault_server()},
        args=_tls_args(ca.server(), ca.ca_file),
        tls=ca.client_context(node_b),
    ) as a:
        policy = (
            f'[[mesh.services]]\nname = "a"\nurl = "{a.url}"\n'
            f'check = {{type = "http", path = "{API}/health", interval_s = 60}}\n'
        )
        env = {
            "MESHGATE_UPSTREAM_CA_FILE": str(ca.ca_file),
            "MESHGATE_UPSTREAM_CLIENT_CERT": str(node_b.cert),
            "MESHGATE_UPSTREAM_CLIENT_KEY": str(node_b.key),
        }
        remote = {"remote": {"type": "http", "url": f"{a.url}/mcp/fault"}}
        with gateway(tmp_path / "b", remote, policy, env=env) as b, httpx.Client() as c:
            r = c.post(
                f"{b.url}/api/v1/mcp/servers/remote/tools/echo",
                json={"arguments": {"text": "over mTLS"}},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert r.json()["content"][0]["text"] == "over mTLS"
            end = time.monotonic() + 30
            while c.get(f"{b.url}{API}/services/a").json()["state"] != "healthy":
                assert time.monotonic() < end, c.get(f"{b.url}{API}/services/a").text
                time.sleep(0.05)
            r = c.get(f"{b.url}{API}/call/a{API}/health")
            assert r.status_code == 200 and r.json()["status"], r.text


def test_registry_and_queue_over_rediss(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    cert = ca.issue("redis", "127.0.0.1")
    server = RedisServer(tmp_path, tls_cert=cert.cert, tls_key=cert.key).start()
    try:
        assert server.url.startswith("rediss://")
        env = {
            "MESHGATE_REGISTRY": server.url,
            "MESHGATE_QUEUE": server.url,
            "MESHGATE_REDIS_CA_FILE": str(ca.ca_file),
        }
        with gateway(tmp_path / "gw", {"fault": fault_server()}, env=env) as gw:
            with httpx.Client(base_url=gw.url, timeout=60) as c:
                target = {"server": "fault", "tool": "echo", "arguments": {"text": "queued"}}
                r = c.post(f"{API}/enqueue", json={"target": target})
                assert r.status_code == 202, r.text
                task = c.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 30}).json()
                assert task["status"] == "succeeded", task
                assert task["result"]["content"][0]["text"] == "queued"
                assert c.get(f"{API}/health").json()["queue"]["backend"] == "redis"
            # The registry wrote this node's instance to the same Redis, over TLS.
            client = redis.Redis.from_url(server.url, ssl_ca_certs=str(ca.ca_file))
            try:
                end = time.monotonic() + 20
                while not client.keys("meshgate:inst:*"):
                    assert time.monotonic() < end, "no instance in the redis registry"
                    time.sleep(0.05)
            finally:
                client.close()
            # Without the CA bundle the server's certificate is not trusted.
            untrusting = redis.Redis.from_url(server.url, socket_connect_timeout=5)
            with pytest.raises(redis.ConnectionError):
                untrusting.ping()
            untrusting.close()
    finally:
        server.stop()


def test_tls_handshakes_are_bounded_in_number_and_time(tmp_path: Path) -> None:
    """Connections that never begin the handshake count towards `max_connections` and are
    closed after `header_timeout_s`; those beyond the bound are closed at once."""
    ca = TestCA(tmp_path / "certs")
    env = {"MESHGATE_MAX_CONNECTIONS": "20", "MESHGATE_HEADER_TIMEOUT_S": "1"}
    with gateway(
        tmp_path / "gw", {}, args=_tls_args(ca.server()), env=env, tls=ca.client_context()
    ) as gw:
        host, port = gw.url.removeprefix("https://").rsplit(":", 1)
        silent = [socket.create_connection((host, int(port))) for _ in range(60)]
        try:
            for s in silent:
                s.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1) == b""  # closed without a word: no TLS was spoken
        finally:
            for s in silent:
                s.close()
        with httpx.Client(verify=ca.client_context()) as c:
            end = time.monotonic() + 10
            while True:  # the server notices the closes on its side in its own time
                try:
                    assert c.get(gw.url + f"{API}/health").status_code == 200
                    break
                except httpx.TransportError:
                    assert time.monotonic() < end, "no handshake after the silent ones closed"
                    time.sleep(0.05)
    refusals = [line for line in gw.log if "refused" in line and "max_connections" in line]
    assert refusals, "no connection was refused for max_connections"


def test_client_certificates_are_identities_with_roles(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "certs")
    agent = ca.issue("agent", "agent.example", common_name="agent-1")
    ops = ca.issue("ops", "ops.example", common_name="ci-runner")
    policy = """
[auth]
[auth.mtls]
roles = ["agent"]
subject_roles = { "ci-runner" = ["admin"] }

[roles.agent]
allow = ["mcp:fault/echo"]
"""
    with gateway(
        tmp_path / "gw",
        {"fault": fault_server()},
        policy,
        args=_tls_args(ca.server(), ca.ca_file, "optional"),
        tls=ca.client_context(),
    ) as gw:
        call = f"{gw.url}/api/v1/mcp/servers/fault/tools"
        with httpx.Client(verify=ca.client_context(agent)) as c:
            assert c.post(f"{call}/echo", json={"arguments": {"text": "x"}}).status_code == 200
            r = c.post(f"{call}/write", json={})
            assert r.status_code == 403 and r.json()["principal"] == "agent-1"
        with httpx.Client(verify=ca.client_context(ops)) as c:
            assert c.post(f"{call}/write", json={}).status_code == 200
        # Optional certificates: a client without one is a client without a credential.
        with httpx.Client(verify=ca.client_context()) as c:
            r = c.post(f"{call}/echo", json={"arguments": {"text": "x"}})
            assert r.status_code == 401 and "www-authenticate" in r.headers
