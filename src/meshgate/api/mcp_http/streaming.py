"""How an MCP HTTP request is answered: as JSON, or committed to Server-Sent Events.

`respond` answers one request: as a JSON body if its reply is ready before it has anything
else to send; once it has (progress, log messages, a server's question), the response commits
to SSE and carries those, then the reply. `Channel` is where a request's messages go until
then. `follow` turns an event stream into SSE text (event ids for resumption, an optional
priming event, a heartbeat comment in long silences).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from meshgate.api.responses import dumps, json_response
from meshgate.api.routing import DisconnectWatch
from meshgate.frontend.context import Emit
from meshgate.frontend.sessions import ClientSession, EventStream
from meshgate.wire import jsonrpc, jsontext
from meshgate.wire.jsonrpc import INTERNAL_ERROR, JSON, REQUEST_CANCELLED

log = logging.getLogger("meshgate.mcp_http")

HEARTBEAT_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


class Channel:
    """Where one request's notifications and reply go. Nothing exists until the request has
    something to send before its reply; then an event stream opens (the session's, so that
    it can be resumed) and the response becomes Server-Sent Events."""

    def __init__(self, id_: Any, session: ClientSession | None, *, sse: bool) -> None:
        self.id = id_
        self.session = session
        self.sse = sse
        self.stream: EventStream | None = None
        self.outcome: tuple[int, JSON] | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def emit(self) -> Emit | None:
        """Where the request's notifications go; None when its client takes no stream. (Made
        on each use: a bound method kept on the channel would be a reference cycle, garbage
        for the collector on every request.)"""
        return self._emit if self.sse else None

    def _emit(self, note: JSON) -> None:
        if self.stream is None:
            if self.session is not None:
                self.stream = self.session.new_stream()
            else:
                self.stream = EventStream(f"r{self.id}", keep=1024)
        self.stream.push(dumps(note, compact=True))
        self._signal()

    def finish(self, outcome: tuple[int, JSON]) -> None:
        self.outcome = outcome
        if self.stream is not None:
            self.stream.push(dumps(outcome[1], compact=True))
            self.stream.close()
        self._signal()

    def _signal(self) -> None:
        if not self.first.done():
            self.first.set_result(None)


async def respond(
    request: Request,
    channel: Channel,
    work: Awaitable[JSON | tuple[int, JSON]],
    *,
    session: ClientSession | None,
    priming: bool = False,
) -> Response:
    """Answer one request: as JSON if it is done before it has anything else to send, as
    Server-Sent Events (notifications, then the reply) once it has.

    In a session the request can be cancelled (`notifications/cancelled`, DELETE) and goes
    on if the client disconnects from its stream, which can be resumed. Without a session
    a closed stream cancels it, as the stateless era defines.
    """
    id_ = channel.id

    async def run() -> None:
        try:
            done = await work
            channel.finish(done if isinstance(done, tuple) else (200, done))
        except asyncio.CancelledError:
            channel.finish((200, jsonrpc.error(id_, REQUEST_CANCELLED, "request cancelled")))
            raise
        except Exception as e:
            log.exception("answering request %r failed", id_)
            channel.finish((200, jsonrpc.error(id_, INTERNAL_ERROR, str(e))))

    task = asyncio.ensure_future(run())
    if session is not None:
        track(session, id_, task)
    watch = DisconnectWatch(request, channel.first.cancel)
    try:
        await channel.first
    except asyncio.CancelledError:  # the client left, or the server stops
        task.cancel()
        raise
    finally:
        watch.stop()
    stream = channel.stream
    if stream is None:
        status, reply = channel.outcome or (200, jsonrpc.error(id_, INTERNAL_ERROR, "no reply"))
        return json_response(reply, status, compact=True)
    chunks = follow(stream, 0, priming=priming, ids=session is not None)
    return event_stream(chunks if session is not None else _owning(task, chunks))


def track(session: ClientSession, id_: Any, task: asyncio.Future[Any]) -> None:
    """Keep a session's request in flight findable by its id, to cancel it, until it ends."""
    key = request_key(id_)
    session.requests[key] = task
    task.add_done_callback(lambda t: _untrack(session, key, t))


def request_key(id_: Any) -> bytes:
    """A request id as the key of a session's requests in flight (1 and "1" differ)."""
    return jsontext.dumps(id_)


def _untrack(session: ClientSession, key: bytes, task: asyncio.Future[Any]) -> None:
    if session.requests.get(key) is task:
        del session.requests[key]


def event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


def sse(event_id: str | None, data: str) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: message\ndata: {data}\n\n"


async def follow(
    stream: EventStream, after: int, *, priming: bool, ids: bool = True
) -> AsyncIterator[str]:
    """A stream's events as SSE text, with a comment line every HEARTBEAT_S of silence."""
    if priming:
        yield f"id: {stream.id}.{after}\ndata: \n\n"
    events = stream.follow(after).__aiter__()
    next_event: asyncio.Task[tuple[str, str]] | None = None
    try:
        while True:
            if next_event is None:
                next_event = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({next_event}, timeout=HEARTBEAT_S)
            if not done:
                yield ": ping\n\n"
                continue
            try:
                event_id, data = next_event.result()
            except StopAsyncIteration:
                return
            next_event = None
            yield sse(event_id if ids else None, data)
    finally:
        if next_event is not None:
            next_event.cancel()


async def counted(session: ClientSession, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Count the session's open GET streams, so an idle sweep does not end it under them."""
    session.get_connected += 1
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        session.get_connected -= 1


async def _owning(task: asyncio.Future[None], chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Stream the chunks; cancel the task behind them if the client goes away first."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        if not task.done():
            task.cancel()
