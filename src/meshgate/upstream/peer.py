"""A peer node's MCP endpoint as an upstream connection, over aiohttp.

The same Streamable HTTP client as `HttpUpstream` (stateless envelope and headers, JSON or
event-stream answers, progress and server requests on the stream), on a connection pool shared
by every peer of the node. httpx's pool slows down under concurrent requests: 16 callers at
once got 250 calls/s through it against 840 through aiohttp from the same process
(bench/bench_cluster.py), so calls forwarded between nodes take aiohttp, as calls to HTTP
services do (`meshgate.services.http`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

import aiohttp

from meshgate.upstream.http import HttpUpstream
from meshgate.wire.connection import ConnectionLost, NotificationHandler, RequestHandler
from meshgate.wire.jsonrpc import JSON


class PeerConnection(HttpUpstream):
    """Calls to one server at one peer node (`{url}/mcp/{server}`), on a shared session."""

    def __init__(self, url: str, *, label: str, session: aiohttp.ClientSession) -> None:
        super().__init__(url, label=label)
        self.session = session

    async def _exchange(
        self,
        id_: int,
        method: str,
        body: JSON,
        on_progress: NotificationHandler | None,
        on_server_request: RequestHandler | None,
        extra: Mapping[str, str] | None = None,
    ) -> JSON:
        headers = self._headers(method, body.get("params"))
        headers.update(extra or {})
        data = json.dumps(body, separators=(",", ":"))
        try:
            async with self.session.post(self.url, data=data, headers=headers) as r:
                ctype = r.headers.get("content-type", "")
                if ctype.startswith("text/event-stream") and r.status == 200:
                    return await self._read_stream(
                        _lines(r.content, self.max_bytes), id_, on_progress, on_server_request
                    )
                raw = bytearray()
                async for chunk in r.content.iter_chunked(64 * 1024):
                    raw += chunk
                    if len(raw) > self.max_bytes:
                        raise ConnectionLost(
                            f"the answer exceeds {self.max_bytes} bytes", sent=True
                        )
                status = r.status
        except aiohttp.ClientConnectorError as e:
            raise self._lost(e, sent=False) from None
        except aiohttp.ClientError as e:
            raise self._lost(e, sent=True) from None
        return self._result(status, bytes(raw), method)

    async def _post(self, msg: JSON) -> None:
        try:
            async with self.session.post(self.url, json=msg, headers=self._headers(None, None)):
                pass
        except aiohttp.ClientError as e:
            self._note(f"answering the peer failed: {e}")

    async def _shutdown(self) -> None:
        await self._client.aclose()  # the session is the node's, shared with other peers


async def _lines(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[str]:
    """An event stream's lines, of any length up to `limit` (aiohttp's own line reader stops
    at 64 KiB, less than one large result)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > limit:
            raise ConnectionLost(f"an event exceeds {limit} bytes", sent=True)
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if buffer:
        yield buffer.decode("utf-8", "replace").rstrip("\r")
