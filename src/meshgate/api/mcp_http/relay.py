"""Sessions that live on another node: their requests relayed to it as they are.

A handshake-era session (and an HTTP+SSE one) lives in the memory of the node that opened it;
its id begins with that node's tag (`meshgate.router.cluster.session_tag`). A request that
reaches another node with such an id (a POST, a GET stream with or without `Last-Event-ID`, a
DELETE, a legacy `/messages` post) is sent on to the owner's same endpoint at its
`advertise_url`: the body and the client's headers as they came (but hop-by-hop headers and the
client's own credentials), under this node's signature asserting the caller, so the owner
checks the session's principal binding against the original caller; the owner's answer is
streamed back as it comes (event streams included). Everything of the session (its streams,
the server's questions to the client, input_required rounds, sticky pins) so stays with the
owner. An id whose node is not in the membership (gone, or never was) is not found (404), so
the client initializes again; an owner that does not accept a connection is 503 until its
record expires.
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

from meshgate.api.mcp_http.checks import Reject
from meshgate.api.problems import read_body
from meshgate.api.proxying import HOP_BY_HOP
from meshgate.errors import InvalidArguments, MeshgateError, PayloadTooLarge
from meshgate.router.call import HOPS_HEADER, TIMEOUT_HEADER, parse_hops, parse_timeout
from meshgate.router.cluster import Cluster
from meshgate.security import principal_of
from meshgate.security.nodes import NODE_HEADERS, NodeCredentials
from meshgate.wire.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST

log = logging.getLogger("meshgate.mcp_http")

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
NOT_FOUND = "session not found or ended; initialize again"


class SessionRelay:
    """Finds a session's owner node and relays a request to it, streaming the answer back."""

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

    def owner(self, request: Request, session_id: str) -> str | None:
        """The URL of the node that holds `session_id`, if not this one; Reject 404 when the
        id names no live node, or when a peer sent it here although it is not this node's (a
        relayed request is never relayed again)."""
        if self.cluster.owns(session_id):
            return None
        relayed = principal_of(request.scope).via == "node" or HOPS_HEADER in request.headers
        record = None if relayed else self.cluster.owner_of(session_id)
        if record is None or not record.address:
            raise Reject(404, INVALID_REQUEST, NOT_FOUND)
        return record.address

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
        try:
            hops = parse_hops(request.headers.get(HOPS_HEADER), max_hops=self.max_hops)
            raw = request.headers.get(TIMEOUT_HEADER)
            if raw is not None:
                left = parse_timeout(raw, name=TIMEOUT_HEADER, minimum=0.001)
                left -= time.monotonic() - started
                if left <= 0:
                    raise Reject(504, INTERNAL_ERROR, "the caller's deadline has passed")
                out[TIMEOUT_HEADER] = f"{left:.3f}"
        except InvalidArguments as e:  # a header of the transport: a bad request, as /mcp says
            raise Reject(400, INVALID_REQUEST, e.detail) from None
        except MeshgateError as e:
            raise Reject(e.status, INVALID_REQUEST, e.detail) from None
        out[HOPS_HEADER] = str(hops + 1)
        if self.credentials is not None:
            out.update(self.credentials.sign(principal_of(request.scope), request.url.path))
        return out

    async def relay(
        self, request: Request, base_url: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Send the request to the same path at `base_url`; stream its answer to the client
        until it ends or the client goes."""
        started = time.monotonic()
        body = b""
        try:
            if request.method == "POST":
                try:
                    body = await read_body(request, self.max_body_bytes)
                except PayloadTooLarge as e:
                    raise Reject(413, INVALID_REQUEST, e.detail) from None
            headers = self._headers(request, started)
        except Reject as r:
            await r.response()(scope, receive, send)
            return
        path = scope.get("raw_path") or request.url.path.encode()
        query = scope.get("query_string") or b""
        url = base_url.rstrip("/") + path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            pending = asyncio.ensure_future(
                self._stream(request.method, url, body, headers, scope, send)
            )
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
        method: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        scope: Scope,
        send: Send,
    ) -> None:
        try:
            response = await self._session().request(
                method,
                url,
                data=body if method == "POST" else None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            retry = max(1, math.ceil(self.cluster.lease_s / 3))
            log.info("the node of a session cannot be reached at %s: %s", url, e)
            await Reject(
                503,
                INTERNAL_ERROR,
                "the node that holds this session cannot be reached; retry, or initialize "
                "again once it has left the cluster",
            ).response({"Retry-After": str(retry)})(scope, _no_receive, send)
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
                log.info("a relayed session stream from %s ended: %s", url, e)
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
    """The answer of the node that holds the session, as a response a route can return."""

    def __init__(self, relay: SessionRelay, request: Request, base_url: str) -> None:
        super().__init__()
        self._relay, self._request, self._base_url = relay, request, base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._relay.relay(self._request, self._base_url, scope, receive, send)
