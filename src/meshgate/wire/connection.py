"""The Connection protocol: what the supervisor and router use of a connection to one MCP
server instance, whatever carries it (a stdio process in `upstream.stdio`, a remote server in
`upstream.http`), and the errors every connection raises."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Protocol

from meshgate.wire.jsonrpc import JSON

ENVELOPE_PREFIX = "io.modelcontextprotocol/"  # the stateless era's per-request keys

NotificationHandler = Callable[[str, JSON], None]
RequestHandler = Callable[[str, JSON], Awaitable[JSON]]


class McpConnection(Protocol):
    """What the supervisor and router use of a connection to one MCP server instance: a stdio
    process (`StdioConnection`) or a remote server (`upstream.http.HttpUpstream`)."""

    label: str
    meta: JSON | None
    handshake: bool
    exit_code: int | None
    garbage_lines: int
    stderr: collections.deque[str]
    closed: asyncio.Future[int | None]
    exited: asyncio.Future[int | None]
    on_notification: NotificationHandler | None
    on_request: RequestHandler | None

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def notify(self, method: str, params: JSON | None = None) -> None: ...

    async def request(
        self,
        method: str,
        params: JSON | None = None,
        *,
        timeout: float,
        on_progress: NotificationHandler | None = None,
        on_server_request: RequestHandler | None = None,
        internal: bool = False,
    ) -> JSON: ...

    def close_stdin(self) -> None: ...


def outgoing_params(conn: McpConnection, params: JSON | None, progress_token: int | None) -> JSON:
    """A request's params as this connection sends them: for a stateless server the envelope
    (the caller's keys on top), for a handshake-era one no envelope keys; and the
    connection's own progress token in place of the caller's."""
    out = dict(params) if params else {}
    if conn.meta is None and progress_token is None and "_meta" not in out:
        return out
    meta = dict(out.get("_meta") or {})
    if conn.meta is not None:
        meta = {**conn.meta, **meta}
    elif conn.handshake:
        meta = {k: v for k, v in meta.items() if not k.startswith(ENVELOPE_PREFIX)}
    if progress_token is not None:
        meta["progressToken"] = progress_token
    if meta:
        out["_meta"] = meta
    else:
        out.pop("_meta", None)
    return out


class ConnectionLost(Exception):
    """The process went away before it answered.

    `sent` says whether the request had been written to the process: a request that was never
    sent is always safe to retry elsewhere.
    """

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.sent = sent


class ResponseTooLarge(Exception):
    """The process answered with a line longer than the configured limit."""
