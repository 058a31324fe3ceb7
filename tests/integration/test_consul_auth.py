"""The Consul-compatible API with `[auth]`: a Consul token (X-Consul-Token, ?token=,
Authorization: Bearer) carries a meshgate API key; roles decide what it may register and see;
a refusal is Consul's plain-text 403. Blocking queries are bounded per principal and in all
(429 beyond). And the `[consul] port` listener serves the API alone."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import consul
import consul.exceptions
import httpx
import pytest

from meshgate.testing.gateway import create_key as make_key
from tests.gateway import Gateway, fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(120)

POLICY = """
[auth]

[roles.registrar]
allow = ["mesh:register/web", "mesh:deregister/web", "mesh:discover"]

[roles.reader]
allow = ["mesh:discover"]
deny = ["mesh:discover/hidden"]

[consul]
max_blocking_queries = 2
max_blocking_queries_per_principal = 1
"""


@dataclass
class Keyed:
    gw: Gateway
    host: str
    port: int
    service_port: int
    admin: str
    registrar: str
    reader: str

    def client(self, token: str | None) -> consul.Consul:
        return consul.Consul(host=self.host, port=self.port, token=token)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("consul_auth")
    with recording_service() as (url, _), run_gateway(tmp, {"fault": fault_server()}, POLICY) as gw:
        data = tmp / "data"
        host, _, port = gw.url.removeprefix("http://").rpartition(":")
        yield Keyed(
            gw,
            host,
            int(port),
            int(url.rpartition(":")[2]),
            admin=make_key(data, "ops", "--role", "admin"),
            registrar=make_key(data, "deployer", "--role", "registrar"),
            reader=make_key(data, "dashboard", "--role", "reader"),
        )


def denied(r: httpx.Response, text: str) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "www-authenticate" not in r.headers
    assert text in r.text, r.text


def test_tokens_are_meshgate_credentials_in_each_of_consuls_places(keyed: Keyed) -> None:
    gw = keyed.gw
    denied(gw.get("/v1/catalog/services"), "Permission denied: this gateway needs a credential")
    denied(gw.get("/v1/catalog/services", headers={"X-Consul-Token": "mgk_wrong"}), "ACL not found")
    denied(gw.get("/v1/catalog/services?token=nonsense"), "ACL not found")
    for request in (
        {"headers": {"X-Consul-Token": keyed.reader}},
        {"params": {"token": keyed.reader}},
        {"headers": {"Authorization": f"Bearer {keyed.reader}"}},
    ):
        r = gw.get("/v1/catalog/services", **request)
        assert r.status_code == 200, r.text
        assert "fault" in r.json()


def test_roles_decide_what_a_token_registers_and_sees(keyed: Keyed) -> None:
    registrar, reader, admin = (
        keyed.client(keyed.registrar),
        keyed.client(keyed.reader),
        keyed.client(keyed.admin),
    )
    where = {"address": "127.0.0.1", "port": keyed.service_port, "check": consul.Check.ttl("60s")}
    assert registrar.agent.service.register("web", service_id="web-1", **where)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied: deployer may not"):
        registrar.agent.service.register("other", service_id="other-1", **where)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        reader.agent.service.register("web", service_id="web-2", **where)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        reader.agent.check.ttl_pass("service:web-1")
    assert registrar.agent.check.ttl_pass("service:web-1")
    assert admin.agent.service.register("hidden", service_id="hidden-1", **where)
    try:
        assert set(admin.catalog.services()[1]) >= {"web", "hidden", "fault"}
        seen = reader.catalog.services()[1]
        assert "web" in seen and "hidden" not in seen
        assert reader.health.service("hidden")[1] == []
        assert [e["Service"]["ID"] for e in reader.health.service("web", passing=True)[1]] == [
            "web-1"
        ]
    finally:
        with pytest.raises(consul.ACLPermissionDenied):
            reader.agent.service.deregister("web-1")
        assert registrar.agent.service.deregister("web-1")
        assert admin.agent.service.deregister("hidden-1")


async def _blocking(gw: Gateway, token: str, index: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        return await client.get(
            "/v1/catalog/services",
            params={"index": index, "wait": "50s"},
            headers={"X-Consul-Token": token},
        )


def test_blocking_queries_are_bounded_per_principal_and_in_all(keyed: Keyed) -> None:
    gw = keyed.gw
    admin = keyed.client(keyed.admin)
    index = admin.catalog.services()[0]

    async def main() -> None:
        # Two of one principal (bound 1): one is held, the other refused at once.
        first = asyncio.ensure_future(_blocking(gw, keyed.reader, index))
        second = asyncio.ensure_future(_blocking(gw, keyed.reader, index))
        done, pending = await asyncio.wait((first, second), return_when=asyncio.FIRST_COMPLETED)
        refused = done.pop().result()
        assert refused.status_code == 429, refused.text
        assert "consul.max_blocking_queries_per_principal" in refused.text
        assert refused.headers["retry-after"] == "1"
        held = pending.pop()
        # A second principal fills the node's bound (2); a third is refused at once.
        two = (
            asyncio.ensure_future(_blocking(gw, keyed.registrar, index)),
            asyncio.ensure_future(_blocking(gw, keyed.admin, index)),
        )
        done, pending = await asyncio.wait(two, return_when=asyncio.FIRST_COMPLETED)
        third, other = done.pop().result(), pending.pop()
        assert third.status_code == 429, third.text
        assert "consul.max_blocking_queries)" in third.text
        # A change wakes the held ones; their slots are free again afterwards.
        await asyncio.to_thread(
            admin.agent.service.register,
            "hidden",
            service_id="wake",
            address="127.0.0.1",
            port=keyed.service_port,
            check=consul.Check.ttl("60s"),
        )
        for answer in (await held, await other):
            assert answer.status_code == 200, answer.text
            assert int(answer.headers["x-consul-index"]) > int(index)
        await asyncio.to_thread(admin.agent.service.deregister, "wake")

    asyncio.run(main())
    r = gw.get(
        "/v1/catalog/services",
        params={"index": index, "wait": "1ms"},
        headers={"X-Consul-Token": keyed.reader},
    )
    assert r.status_code == 200, r.text


def test_a_client_that_leaves_frees_its_blocking_query_at_once(keyed: Keyed) -> None:
    gw = keyed.gw
    index = keyed.client(keyed.admin).catalog.services()[0]
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    # One held query of the reader (its bound is 1), then its connection closed.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/catalog/services?index={index}&wait=50s HTTP/1.1\r\n"
            f"Host: {host}\r\nX-Consul-Token: {keyed.reader}\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 20
        while True:  # held once another query of the reader's is refused
            r = _short(gw, keyed.reader, index)
            if r.status_code == 429:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
    deadline = time.monotonic() + 20  # well within the 50 s it would otherwise be held
    while (r := _short(gw, keyed.reader, index)).status_code == 429:
        assert time.monotonic() < deadline, "the slot of a client that left was kept"
        time.sleep(0.05)
    assert r.status_code == 200, r.text


def _short(gw: Gateway, token: str, index: str) -> httpx.Response:
    """A blocking query that waits a millisecond: refused (429) while the bound is reached."""
    return gw.get(
        "/v1/catalog/services",
        params={"index": index, "wait": "1ms"},
        headers={"X-Consul-Token": token},
    )


def test_the_consul_port_serves_the_consul_api_alone(tmp_path: Path) -> None:
    with (
        recording_service() as (url, _),
        run_gateway(tmp_path, {"fault": fault_server()}, "[consul]\nport = 0\n") as gw,
    ):
        line = next(x for x in gw.log if "Consul-compatible API listening" in x)
        m = re.search(r"on (http://[\d.]+:\d+)", line)
        assert m is not None, line
        consul_url = m.group(1)
        port = int(consul_url.rpartition(":")[2])
        c = consul.Consul(host="127.0.0.1", port=port)
        assert c.catalog.services()[1]["fault"] == ["mcp"]
        for path in ("/api/v1/mesh/v2/services", "/readyz", "/mcp/fault", "/openapi.json"):
            r = httpx.get(consul_url + path)
            assert r.status_code == 404, (path, r.text)
            assert "serves only the Consul-compatible API" in r.text
        r = httpx.get(consul_url + "/v1/catalog/services", headers={"Host": "evil.example"})
        assert r.status_code == 421, r.text
        with pytest.raises(consul.exceptions.BadRequest, match="this gateway's own listener"):
            c.agent.service.register("loop", address="127.0.0.1", port=port)
        # The main port still serves it too.
        assert gw.get("/v1/catalog/services").json()["fault"] == ["mcp"]
        assert int(url.rpartition(":")[2]) != port


def test_the_openapi_document_leaves_the_consul_api_out(keyed: Keyed) -> None:
    doc = keyed.gw.get("/openapi.json", headers={"Authorization": f"Bearer {keyed.admin}"}).json()
    assert doc["paths"] and not [p for p in doc["paths"] if p.startswith("/v1/")]
