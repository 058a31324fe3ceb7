"""Requests for what another node of the cluster holds, relayed to that node as they are.

Some things live on one node only: a handshake-era session (`meshgate.api.mcp_http.relay`), an
HTTP service instance registered there (its durable store, its registry record). A request for
one that reaches another node is sent on to the owner's same path at its `advertise_url`: the
body and the client's headers as they came (but hop-by-hop headers and the client's own
credentials), with the deadline left and the hop count, under this node's signature asserting
the caller (`meshgate.security.nodes`), so the owner decides as it would for the caller itself.
The owner's answer is streamed back as it comes. A request that came from a peer, or carries a
hop count, is never relayed again: it is answered by the node it reached. An owner that does not
accept a connection is 503 with Retry-After (its record lasts until its lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meshgate.api.problems import problem_response, read_body
from meshgate.api.proxying import HOP_BY_HOP
from meshgate.errors import MeshgateError, Unavailable, UpstreamTimeout
from meshgate.router.call import HOPS_HEADER, TIMEOUT_HEADER, parse_hops, parse_timeout
from meshgate.router.cluster import Cluster
from meshgate.security import principal_of
from meshgate.security.nodes import NODE_HEADERS, NodeCredentials

log = logging.getLogger("meshgate.cluster")

# The client's credentials stay on the node it reached (the signature speaks for it there);
# the length and host are the new request's own; the deadline and hops are set anew.
_NOT_SENT = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    TIMEOUT_HEADER,
    HOPS_HEADER,
    *NODE_HEADERS,
}


class NodeRelay:
    """Relays a request to the node that owns what it names, streaming the answer back;
    refusals are RFC 9457 problems (a subclass may answer in its protocol's shape)."""

    unreachable = "the node that owns this instance cannot be reached; retry"

    def __init__(
        self,
        cluster: Cluster,
        credentials: NodeCredentials | None,
        *,
        max_hops: int,
        max_body_bytes: int,
        tls: Any = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.cluster = cluster
        self.credentials = credentials
        self.max_hops = max_hops
        self.max_body_bytes = max_body_bytes
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self._http: aiohttp.ClientSession | None = None

    @staticmethod
    def relayed(request: Request) -> bool:
        """Whether a request came from a peer (or says it passed a gateway): never relayed
        again, so two nodes that disagree on an owner cannot send it back and forth."""
        return principal_of(request.scope).via == "node" or HOPS_HEADER in request.headers

    def refuse(self, request: Request, err: MeshgateError) -> Response:
        """The answer when the request cannot be relayed."""
        return problem_response(err, request.url.path)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, ssl=self.tls if self.tls is not None else True
                ),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s),
                cookie_jar=aiohttp.DummyCookieJar(),
                # The bytes pass through as the owner encoded them, with its Content-Encoding.
                auto_decompress=False,
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _headers(self, request: Request, started: float) -> dict[str, str]:
        named = {h.strip().lower() for h in request.headers.get("connection", "").split(",") if h}
        out = {k: v for k, v in request.headers.items() if k not in _NOT_SENT and k not in named}
        hops = parse_hops(request.headers.get(HOPS_HEADER), max_hops=self.max_hops)
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is not None:
            left = parse_timeout(raw, name=TIMEOUT_HEADER, minimum=0.001)
            left -= time.monotonic() - started
            if left <= 0:
                raise UpstreamTimeout("the caller's deadline has passed")
            out[TIMEOUT_HEADER] = f"{left:.3f}"
        out[HOPS_HEADER] = str(hops + 1)
        if self.credentials is not None:
            out.update(self.credentials.sign(principal_of(request.scope), request.url.path))
        return out

    async def relay(
        self,
        request: Request,
        base_url: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        body: bytes | None = None,
    ) -> None:
        """Send the request to the same path at `base_url`; stream its answer to the client
        until it ends or the client goes. `body`: the request's, when a route read it already
        (otherwise a POST's, PUT's or PATCH's is read here)."""
        started = time.monotonic()
        try:
            if body is None:
                has_body = request.method in ("POST", "PUT", "PATCH")
                body = await read_body(request, self.max_body_bytes) if has_body else b""
            headers = self._headers(request, started)
        except MeshgateError as e:
            await self.refuse(request, e)(scope, receive, send)
            return
        path = scope.get("raw_path") or request.url.path.encode()
        query = scope.get("query_string") or b""
        url = base_url.rstrip("/") + path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            pending = asyncio.ensure_future(self._stream(request, url, body, headers, scope, send))
            done, _ = await asyncio.wait({pending, gone}, return_when=asyncio.FIRST_COMPLETED)
            if pending not in done:  # the client went: the owner sees its stream close too
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pending
            else:
                pending.result()
        finally:
            gone.cancel()

    async def _stream(
        self,
        request: Request,
        url: str,
        body: bytes,
        headers: dict[str, str],
        scope: Scope,
        send: Send,
    ) -> None:
        try:
            response = await self._session().request(
                request.method,
                url,
                data=body or None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            log.info("an owner node cannot be reached at %s: %s", url, e)
            retry = max(1, math.ceil(self.cluster.lease_s / 3))
            refusal = self.refuse(request, Unavailable(self.unreachable, retry_after=retry))
            await refusal(scope, _no_receive, send)
            return
        async with response:
            named = {
                h.strip().lower() for h in response.headers.get("connection", "").split(",") if h
            }
            out = [
                (k.lower(), v)
                for k, v in response.raw_headers
                if k.decode("latin-1").lower() not in HOP_BY_HOP | named
            ]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except aiohttp.ClientError as e:  # the owner's stream broke: end the client's
                log.info("a relayed stream from %s ended: %s", url, e)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read before)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


class Relayed(Response):
    """The answer of the node that owns what the request names, as a response a route can
    return."""

    def __init__(
        self, relay: NodeRelay, request: Request, base_url: str, body: bytes | None = None
    ) -> None:
        super().__init__()
        self._relay, self._request, self._base_url, self._body = relay, request, base_url, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._relay.relay(
            self._request, self._base_url, scope, receive, send, body=self._body
        )
