"""A remote MCP server over Streamable HTTP, as an upstream of the gateway.

`HttpUpstream` offers what the supervisor and router use of a stdio connection (`request`,
`notify`, `alive`, `closed`), so a `url` entry of `.mcp.json` becomes a pool like any other:
discovered (`server/discover`, else `initialize`), health-checked, balanced, circuit-broken.

- Stateless servers (2026-07-28): each request carries the `_meta` envelope and the
  `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers.
- Handshake-era servers: the `Mcp-Session-Id` from `initialize` goes on every request; a 404
  means the server ended the session, which closes this connection (the slot reconnects).
- Answers come as JSON or as Server-Sent Events; on a stream, progress and log notifications
  go to the request's handler and server-to-client requests are answered by POSTing the reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
from mcp.shared.inbound import (
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)

from meshgate.wire import jsonrpc
from meshgate.wire.connection import (
    ConnectionLost,
    NotificationHandler,
    RequestHandler,
    outgoing_params,
)
from meshgate.wire.jsonrpc import JSON, JsonRpcError

log = logging.getLogger("meshgate.upstream")

ACCEPT = "application/json, text/event-stream"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class HttpUpstream:
    """One connection (and, for handshake-era servers, one session) to a remote MCP server."""

    def __init__(
        self,
        url: str,
        *,
        label: str,
        headers: Mapping[str, str] | None = None,
        stderr_lines: int = 200,
        tls: ssl.SSLContext | None = None,
        max_bytes: int = 32 * 1024 * 1024,
        on_notification: NotificationHandler | None = None,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.url = url
        self.label = label
        self.max_bytes = max_bytes
        self.on_notification = on_notification
        self.on_request = on_request
        # A tool's input schema by name, for the Mcp-Param-* headers of its x-mcp-header
        # arguments (set by the pool, which keeps the catalog).
        self.tool_schema: Callable[[str], Any] | None = None
        self.handshake = False  # set once `initialize` succeeded: no stateless envelope
        self.meta: JSON | None = None  # set by discovery for stateless servers
        self.protocol_version: str | None = None  # set by initialize for handshake-era ones
        self.session_id: str | None = None
        self.exit_code: int | None = None
        self.garbage_lines = 0
        self.stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(None, connect=10.0),
            # https: the gateway's CA bundle and client certificate, else the system's trust
            verify=tls if tls is not None else True,
        )
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def alive(self) -> bool:
        return not self.closed.done()

    @property
    def pid(self) -> int | None:
        return None

    def _headers(self, method: str | None, params: JSON | None) -> dict[str, str]:
        h = {"Accept": ACCEPT, "Content-Type": "application/json"}
        meta = (params or {}).get("_meta")
        version = meta.get(META_VERSION) if isinstance(meta, dict) else None
        if version is None and self.meta is not None:
            version = self.meta.get(META_VERSION)
        if version is not None:  # a stateless request: its envelope, mirrored in headers
            h["MCP-Protocol-Version"] = str(version)
            if method is not None:
                h["Mcp-Method"] = method
                key = NAME_BEARING.get(method)
                value = (params or {}).get(key) if key else None
                if isinstance(value, str):
                    h["Mcp-Name"] = _header_value(value)
                if method == "tools/call" and isinstance(value, str):
                    h.update(self._param_headers(value, (params or {}).get("arguments")))
        elif self.protocol_version is not None:
            h["MCP-Protocol-Version"] = self.protocol_version
        if self.session_id is not None:
            h["Mcp-Session-Id"] = self.session_id
        return h

    def _param_headers(self, tool: str, arguments: Any) -> dict[str, str]:
        schema = self.tool_schema(tool) if self.tool_schema is not None else None
        if not isinstance(schema, dict) or not isinstance(arguments, dict):
            return {}
        if find_invalid_x_mcp_header(schema) is not None:
            return {}
        return mcp_param_headers(x_mcp_header_map(schema), arguments)

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: JSON | None = None,
        *,
        timeout: float,
        on_progress: NotificationHandler | None = None,
        on_server_request: RequestHandler | None = None,
        internal: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> JSON:
        """Send a request and wait for its result; the same contract as StdioConnection.
        `headers`: added to this request only (a peer node's deadline, hops and signature)."""
        if not self.alive:
            raise ConnectionLost(f"{self.label} is closed", sent=False)
        self._next_id += 1
        id_ = self._next_id
        params = outgoing_params(self, params, id_ if on_progress is not None else None)
        body = jsonrpc.request(id_, method, params)
        try:
            async with asyncio.timeout(timeout):
                result = await self._exchange(
                    id_, method, body, on_progress, on_server_request, headers
                )
        except (TimeoutError, asyncio.CancelledError):
            if self.meta is None and self.alive:  # handshake era: say so; stateless: closing is
                reason = "deadline exceeded"
                self.notify("notifications/cancelled", {"requestId": id_, "reason": reason})
            raise
        if method == "initialize":
            version = result.get("protocolVersion")
            self.protocol_version = version if isinstance(version, str) else None
        return result

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
        try:
            async with self._client.stream("POST", self.url, json=body, headers=headers) as r:
                if method == "initialize" and "mcp-session-id" in r.headers:
                    self.session_id = r.headers["mcp-session-id"]
                ctype = r.headers.get("content-type", "")
                if r.status_code == 404 and self.session_id is not None and method != "initialize":
                    self._close(f"the server ended the session (404 to {method})")
                    raise ConnectionLost(f"{self.label}: session ended by the server", sent=True)
                if ctype.startswith("text/event-stream") and r.status_code == 200:
                    return await self._read_stream(
                        r.aiter_lines(), id_, on_progress, on_server_request
                    )
                raw = await _read_limited(r, self.max_bytes)
        except httpx.ConnectError as e:
            raise self._lost(e, sent=False) from None
        except httpx.HTTPError as e:
            raise self._lost(e, sent=True) from None
        return self._result(r.status_code, raw, method)

    def _lost(self, e: Exception, *, sent: bool) -> ConnectionLost:
        """The error for a request that failed on the way: `sent`, it may have reached the
        server; not sent (the connection was refused), it surely did not."""
        if not sent:
            self._note(f"cannot connect: {e}")
            return ConnectionLost(f"{self.label}: cannot connect to {self.url}: {e}", sent=False)
        self._note(f"{type(e).__name__}: {e}")
        return ConnectionLost(f"{self.label}: {type(e).__name__}: {e}", sent=True)

    def _result(self, status: int, raw: bytes, method: str) -> JSON:
        try:
            msg = json.loads(raw) if raw.strip() else None
        except ValueError:
            msg = None
        if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
            err = msg["error"]
            raise JsonRpcError(
                int(err.get("code", jsonrpc.INTERNAL_ERROR)),
                str(err.get("message", "error")),
                err.get("data"),
            )
        if status == 200 and isinstance(msg, dict) and isinstance(msg.get("result"), dict):
            result: JSON = msg["result"]
            return result
        if msg is None and status < 500:
            self.garbage_lines += int(bool(raw.strip()))
        self._note(f"HTTP {status} to {method}: {raw[:200]!r}")
        if status >= 500:
            raise ConnectionLost(f"{self.label}: HTTP {status} to {method}", sent=True)
        # A 4xx without a JSON-RPC error (a server of another era, usually): the method is
        # not available there.
        raise JsonRpcError(
            jsonrpc.METHOD_NOT_FOUND, f"HTTP {status} to {method}", {"http_status": status}
        )

    async def _read_stream(
        self,
        lines: AsyncIterator[str],
        id_: int,
        on_progress: NotificationHandler | None,
        on_server_request: RequestHandler | None,
    ) -> JSON:
        """The response to request `id_` from an event stream's lines; what else comes on it
        goes to the handlers."""
        data: list[str] = []
        async for line in lines:
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
                continue
            if line or not data:
                continue
            payload, data = "\n".join(data), []
            msg = jsonrpc.decode(payload.encode())
            if msg is None:
                if payload.strip():
                    self.garbage_lines += 1
                continue
            if msg.get("id") == id_ and ("result" in msg or "error" in msg):
                return self._result(200, payload.encode(), "stream")
            self._on_message(msg, on_progress, on_server_request)
        raise ConnectionLost(f"{self.label}: the stream ended without a response", sent=True)

    def _on_message(
        self,
        msg: JSON,
        on_progress: NotificationHandler | None,
        on_server_request: RequestHandler | None,
    ) -> None:
        method = msg.get("method")
        if not isinstance(method, str):
            return
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        assert isinstance(params, dict)
        if "id" in msg:  # the server asks something while it works on this request
            handler = on_server_request or self.on_request
            self._spawn(self._answer(msg["id"], method, params, handler))
        elif method in ("notifications/progress", "notifications/message") and on_progress:
            on_progress(method, params)
        elif self.on_notification is not None:
            self.on_notification(method, params)

    async def _answer(
        self, id_: Any, method: str, params: JSON, handler: RequestHandler | None
    ) -> None:
        try:
            if handler is None:
                raise JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"{method} is not supported")
            reply = jsonrpc.result(id_, await handler(method, params))
        except JsonRpcError as e:
            reply = jsonrpc.error(id_, e.code, e.message, e.data)
        await self._post(reply)

    # -- notifications and lifecycle -----------------------------------------------------------

    def notify(self, method: str, params: JSON | None = None) -> None:
        """Send a notification; fire and forget."""
        if self.alive:
            self._spawn(self._post(jsonrpc.notification(method, params)))

    async def _post(self, msg: JSON) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post(self.url, json=msg, headers=self._headers(None, None))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note(self, line: str) -> None:
        self.stderr.append(line)
        log.info("%s: %s", self.label, line)

    def _close(self, reason: str) -> None:
        if not self.closed.done():
            self._note(reason)
            self.closed.set_result(None)
            self.exited.set_result(None)
            self._spawn(self._shutdown())

    async def _shutdown(self) -> None:
        if self.session_id is not None and self.meta is None:
            with contextlib.suppress(httpx.HTTPError):
                await self._client.delete(self.url, headers=self._headers(None, None))
        await self._client.aclose()

    def close_stdin(self) -> None:
        """End the connection (the stdio connection's name for it)."""
        self._close("closed by the gateway")


async def _read_limited(r: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in r.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ConnectionLost(f"the answer exceeds {limit} bytes", sent=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _header_value(value: str) -> str:
    """A header value as SEP-2243 wants it: base64 for what a header cannot carry as is."""
    return encode_header_value(value)
