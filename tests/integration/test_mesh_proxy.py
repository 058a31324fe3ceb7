"""What the HTTP service proxy passes through: streams as they come, whole large bodies, its
connections kept alive and closed when the reader leaves, and nothing of its own added."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway import fault_server, run_gateway, serve_app

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
BIG = bytes(range(256)) * (8 * 4096)  # 8 MiB


class Service:
    """A real HTTP service (uvicorn, its own thread and loop, a port from the OS) that shows
    what reached it."""

    def __init__(self) -> None:
        self.peers: set[tuple[str, int]] = set()  # one per connection the proxy opened
        self.released = asyncio.Event()
        self.stream_ended = ""  # how /stream ended: "disconnect" or "released"

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path != "/healthz":
            self.peers.add(tuple(scope["client"]))
        while (await receive()).get("more_body"):
            pass
        if path == "/stream":  # one chunk (none if ?quiet), then nothing until released or left
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if scope["query_string"] != b"quiet":
                await send({"type": "http.response.body", "body": b"first;", "more_body": True})
            left = asyncio.ensure_future(receive())
            released = asyncio.ensure_future(self.released.wait())
            await asyncio.wait((left, released), return_when=asyncio.FIRST_COMPLETED)
            if left.done():
                self.stream_ended = "disconnect"
                released.cancel()
                return
            self.stream_ended = "released"
            left.cancel()
            await send({"type": "http.response.body", "body": b"second"})
            return
        if path == "/release":
            self.released.set()
        status, headers, body = 200, [(b"content-type", b"application/json")], b"{}"
        if path == "/big":
            headers = [(b"content-length", str(len(BIG)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(0, len(BIG), 1 << 20):
                more = i + (1 << 20) < len(BIG)
                await send(
                    {
                        "type": "http.response.body",
                        "body": BIG[i : i + (1 << 20)],
                        "more_body": more,
                    }
                )
            return
        if path == "/headers":
            seen: dict[str, list[str]] = {}
            for k, v in scope["headers"]:
                seen.setdefault(k.decode(), []).append(v.decode())
            body = json.dumps(seen).encode()
        elif path == "/cookie":
            headers.append((b"set-cookie", b"session=secret; Path=/"))
            headers.append((b"set-cookie", b"theme=dark; Path=/"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def service() -> Iterator[tuple[Service, str]]:
    app = Service()
    with serve_app(app) as url:
        yield app, url


def wait_ended(svc: Service, how: str) -> None:
    end = time.monotonic() + 10
    while svc.stream_ended != how:
        assert time.monotonic() < end, f"the service's stream: {svc.stream_ended!r}"
        time.sleep(0.02)


def test_the_proxy_streams_passes_bodies_whole_reuses_and_closes_connections(
    tmp_path: Path,
) -> None:
    with service() as (svc, url):
        policy = (
            f'[[mesh.services]]\nname = "svc"\nurl = "{url}"\n'
            'check = {type = "http", path = "/healthz", interval_s = 60}\n'
        )
        with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
            end = time.monotonic() + 30
            while gw.get(f"{API}/services/svc").json()["state"] != "healthy":
                assert time.monotonic() < end, "svc never became healthy"
                time.sleep(0.05)
            call = f"{API}/call/svc"

            # A stream reaches the client as it comes: the first chunk arrives while the
            # service still holds the rest back (a buffering proxy would wait here until the
            # read timeout failed the test).
            with gw.http.stream("GET", f"{call}/stream", timeout=10) as r:
                chunks = r.iter_raw()
                assert next(chunks) == b"first;"
                assert httpx.post(f"{url}/release").status_code == 200
                assert b"".join(chunks) == b"second"
            assert svc.stream_ended == "released"

            # A reader that leaves mid-stream, or before the first bytes: the proxy closes its
            # connection to the service.
            svc.released.clear()
            with gw.http.stream("GET", f"{call}/stream", timeout=10) as r:
                assert next(r.iter_raw()) == b"first;"
            wait_ended(svc, "disconnect")
            svc.stream_ended = ""
            with gw.http.stream("GET", f"{call}/stream?quiet", timeout=10) as r:
                assert r.status_code == 200
            wait_ended(svc, "disconnect")

            # A large body comes whole, with its length; HEAD has the length and no body.
            r = gw.get(f"{call}/big")
            assert r.status_code == 200 and r.headers["content-length"] == str(len(BIG))
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(BIG).digest()
            r = gw.http.head(f"{call}/big")
            assert r.headers["content-length"] == str(len(BIG)) and r.content == b""

            # Keep-alive: a hundred calls, one after another, share a connection or two.
            svc.peers.clear()
            for _ in range(100):
                assert gw.get(f"{call}/ok").status_code == 200
            assert 1 <= len(svc.peers) <= 2, svc.peers

            # Nothing of the proxy's own: no cookie kept from another call's answer, and no
            # header but Host and X-Forwarded-* that the client did not send.
            cookies = gw.get(f"{call}/cookie").headers.get_list("set-cookie")
            assert cookies == ["session=secret; Path=/", "theme=dark; Path=/"]  # as sent
            gateway = urlsplit(gw.url)
            conn = http.client.HTTPConnection(gateway.hostname or "", gateway.port, timeout=10)
            try:
                conn.putrequest("GET", f"{call}/headers", skip_accept_encoding=True)
                conn.putheader("X-Request", "1")
                conn.endheaders()
                seen = json.loads(conn.getresponse().read())
            finally:
                conn.close()
            for name in ("traceparent", "tracestate"):  # 1 % of calls are traced
                seen.pop(name, None)
            # The mesh's own: the deadline left and the hop count, for the next hop.
            assert 25 < float(seen.pop("x-meshgate-timeout")[0]) <= 30
            assert seen.pop("x-meshgate-hops") == ["1"]
            assert seen == {
                "host": [url.removeprefix("http://")],
                "x-request": ["1"],
                "x-forwarded-for": ["127.0.0.1"],
                "x-forwarded-proto": ["http"],
                "x-forwarded-host": [gateway.netloc],
            }
