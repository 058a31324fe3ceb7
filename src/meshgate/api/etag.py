"""Entity tags on the API's reads, so that a client polling for changes (the dashboard reads
its views every second) gets `304 Not Modified` and no body while nothing changed.

The tag is a hash of the answer's body: computed after the route has answered (and after the
caller passed the chain), so it tells nothing a 200 would not, and two callers who may see
different things get different tags. Only whole JSON answers of `GET /api/v1/...` are tagged;
the HTTP service proxy passes the services' own headers through untouched.
"""

from __future__ import annotations

import hashlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshgate.api.guard import PROXY_PREFIX, REST_PREFIX

_DROPPED_ON_304 = frozenset({b"content-length", b"content-type"})


def etag(body: bytes) -> bytes:
    return b'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode() + b'"'


def matches(if_none_match: bytes, tag: bytes) -> bool:
    """Whether an `If-None-Match` value names `tag` (weak comparison, RFC 9110 13.1.2)."""
    if if_none_match.strip() == b"*":
        return True
    bare = tag.removeprefix(b"W/")
    return any(t.strip().removeprefix(b"W/") == bare for t in if_none_match.split(b","))


class ConditionalGet:
    """ASGI middleware: an `ETag` on each whole 200 answer to `GET /api/v1/...`, and `304`
    in its place when the request's `If-None-Match` names it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not path.startswith(REST_PREFIX)
            or path.startswith(PROXY_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        wanted = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        held: Message | None = None

        async def tagged(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] == 200:
                held = message  # until the body shows whether it comes whole
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            start, held = held, None
            if message.get("more_body", False):  # a stream: passed on as it is
                await send(start)
                await send(message)
                return
            tag = etag(message.get("body", b""))
            headers = [(k, v) for k, v in start["headers"] if k != b"etag"]
            if wanted is not None and matches(wanted, tag):
                headers = [(k, v) for k, v in headers if k not in _DROPPED_ON_304]
                await send({**start, "status": 304, "headers": [*headers, (b"etag", tag)]})
                await send({"type": "http.response.body", "body": b""})
                return
            await send({**start, "headers": [*headers, (b"etag", tag)]})
            await send(message)

        await self.app(scope, receive, tagged)
