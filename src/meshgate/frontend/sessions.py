"""Client sessions of the MCP front end, and the event streams they are sent on.

A handshake-era client (2024-11-05 .. 2025-11-25) gets a session at `initialize`, named by the
`Mcp-Session-Id` header it sends back on every request. A session owns:

- one standing stream (the GET stream) for messages not tied to a request, such as
  `list_changed` notifications;
- one stream per request answered as Server-Sent Events (progress, then the response);
- the tasks of its requests in flight, so `notifications/cancelled` and DELETE can stop them.

Every event has an id `<stream>.<n>`. A client that lost a stream reconnects with GET and
`Last-Event-ID`; the stream's remaining events are replayed, and the stream goes on if it is
still open. Each stream keeps its newest `keep` events; a session keeps at most MAX_STREAMS
streams (the oldest closed ones go first), and a stream closed for longer than the idle
timeout is forgotten.

Stateless (2026-07-28) requests have no session; their streams live only as long as their
HTTP response.

Sessions are bounded three ways, so that `initialize` requests nobody follows up cannot lock
other clients out: a session that has made no request (and opened no GET stream) since its
`initialize` ends after the short `unused_timeout_s`; when `max_sessions` is reached, the
oldest such unused session gives way to the new one; and each principal holds at most
`max_per_principal` sessions (the `local` principal of a gateway without authentication is
bounded by `max_sessions` only). Only when every session is in use is `initialize` refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from meshgate.errors import TooManyRequests, Unavailable
from meshgate.observability.metrics import count_rate_limited
from meshgate.router import Pin
from meshgate.wire.jsonrpc import JSON

log = logging.getLogger("meshgate.sessions")

GET_STREAM = "g"
LOCAL_PRINCIPAL = "local"  # a gateway without authentication: every client is this one
_RELEASES: set[asyncio.Future[None]] = set()  # releases in progress, kept from the collector
MAX_STREAMS = 128  # per session; the oldest closed streams are forgotten first


class TooManySessions(Unavailable):
    """Every one of the gateway's `max_sessions` sessions is in use: a capacity limit (503),
    not a fault of the caller's."""

    type = "too-many-sessions"
    title = "Too many MCP sessions"
    reason = "session_limit"


class TooManySessionsForPrincipal(TooManyRequests):
    """The caller already holds `max_sessions_per_principal` sessions (429)."""

    type = "too-many-sessions-for-principal"
    title = "Too many MCP sessions for this caller"


class EventStream:
    """The events of one SSE stream, kept so a client can resume it."""

    def __init__(
        self, stream_id: str, *, keep: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.id = stream_id
        self._clock = clock
        self.events: collections.deque[tuple[int, str]] = collections.deque(maxlen=keep)
        self.closed_at: float | None = None
        self._next = 1
        self._wake = asyncio.Event()

    @property
    def last(self) -> int:
        return self._next - 1

    def push(self, data: str) -> None:
        if self.closed_at is not None:
            return
        self.events.append((self._next, data))
        self._next += 1
        self._wake.set()
        self._wake = asyncio.Event()

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = self._clock()
            self._wake.set()

    async def follow(self, after: int) -> AsyncIterator[tuple[str, str]]:
        """Yield (event id, data) for every event after `after`, until the stream closes."""
        while True:
            wake = self._wake
            for n, data in list(self.events):
                if n > after:
                    after = n
                    yield f"{self.id}.{n}", data
            if self.closed_at is not None and after >= self.last:
                return
            if after >= self.last:
                await wake.wait()


@dataclass
class ClientSession:
    id: str
    target: str | None  # a server's name, or None for the aggregate endpoint
    protocol_version: str
    client_capabilities: JSON
    client_info: JSON
    keep_events: int
    clock: Callable[[], float] = time.monotonic  # the store's: idle times are measured by it
    created: float = field(init=False)  # by `clock`
    last_seen: float = field(init=False)
    initialized: bool = False
    log_level: str | None = None  # from logging/setLevel
    streams: dict[str, EventStream] = field(default_factory=dict)
    requests: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    get_connected: int = 0
    asked: dict[str, asyncio.Future[JSON]] = field(default_factory=dict)  # questions to the client
    asks: int = 0
    legacy: bool = False  # the HTTP+SSE transport of 2024-11-05
    pins: dict[str, Pin] = field(default_factory=dict)  # sticky servers' instances
    subscriptions: set[str] = field(default_factory=set)  # resource URIs (resources/subscribe)
    caller: str | None = None  # for the topology: X-Meshgate-Caller, or the client's name
    principal: str = LOCAL_PRINCIPAL  # whose session it is, for the per-principal bound
    used: bool = False  # a request or a GET stream since initialize
    owner: tuple[str, str] | None = None  # (name, via) of the principal that opened it

    def __post_init__(self) -> None:
        self.created = self.last_seen = self.clock()
        self.streams[GET_STREAM] = EventStream(GET_STREAM, keep=self.keep_events, clock=self.clock)

    @property
    def standing(self) -> EventStream:
        return self.streams[GET_STREAM]

    def emit_standing(self, message: JSON) -> None:
        """Send a message not tied to a request: on the GET stream (or the HTTP+SSE stream)."""
        self.standing.push(json.dumps(message, separators=(",", ":")))

    def new_stream(self) -> EventStream:
        stream = EventStream(secrets.token_hex(4), keep=self.keep_events, clock=self.clock)
        self.streams[stream.id] = stream
        if len(self.streams) > MAX_STREAMS:
            self._forget_oldest_closed()
        return stream

    def _forget_oldest_closed(self) -> None:
        closed = [s for s in self.streams.values() if s.closed_at is not None]
        closed.sort(key=lambda s: s.closed_at or 0.0)
        for stream in closed[: len(self.streams) - MAX_STREAMS // 2]:
            del self.streams[stream.id]

    def find(self, event_id: str) -> tuple[EventStream, int] | None:
        """The stream an event id belongs to, and the event's number."""
        stream_id, _, n = event_id.rpartition(".")
        stream = self.streams.get(stream_id)
        if stream is None or not n.isdigit():
            return None
        return stream, int(n)

    def forget_closed(self, older_than: float) -> None:
        now = self.clock()
        for sid, stream in list(self.streams.items()):
            if stream.closed_at is not None and now - stream.closed_at > older_than:
                del self.streams[sid]

    def end(self) -> None:
        for pin in self.pins.values():  # dedicated processes go with their session
            if pin.release is not None and pin.instance is not None:
                release = asyncio.ensure_future(pin.release(pin.instance))
                _RELEASES.add(release)
                release.add_done_callback(_RELEASES.discard)
        for fut in self.asked.values():
            fut.cancel()
        for task in self.requests.values():
            task.cancel()
        for stream in self.streams.values():
            stream.close()


class SessionStore:
    """Every live client session, with bounds (in all, per principal) and idle timeouts."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_timeout_s: float,
        max_per_principal: int | None = None,
        unused_timeout_s: float | None = None,
        keep_events: int = 256,
        clock: Callable[[], float] = time.monotonic,
        id_prefix: str = "",
    ) -> None:
        self.id_prefix = id_prefix  # names the node that holds the session (router.cluster)
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.max_per_principal = max_per_principal
        self.unused_timeout_s = min(unused_timeout_s or idle_timeout_s, idle_timeout_s)
        self.keep_events = keep_events
        self.clock = clock
        self.sessions: dict[str, ClientSession] = {}  # oldest first
        self.per_principal: collections.Counter[str] = collections.Counter()
        self._sweeper: asyncio.Task[None] | None = None

    def create(
        self,
        target: str | None,
        protocol_version: str,
        capabilities: JSON,
        client_info: JSON,
        *,
        principal: str = LOCAL_PRINCIPAL,
    ) -> ClientSession:
        bounded = self.max_per_principal is not None and principal != LOCAL_PRINCIPAL
        if len(self.sessions) >= self.max_sessions or (
            bounded and self.per_principal[principal] >= (self.max_per_principal or 0)
        ):
            self.sweep()
        if bounded and self.per_principal[principal] >= (self.max_per_principal or 0):
            count_rate_limited("sessions_per_principal")
            raise TooManySessionsForPrincipal(
                f"{principal!r} already holds {self.max_per_principal} MCP sessions "
                "(mesh.max_sessions_per_principal); end one with DELETE, or wait for unused "
                "ones to expire",
                retry_after=self.unused_timeout_s,
                extra={"bound": "max_sessions_per_principal", "limit": self.max_per_principal},
            )
        if len(self.sessions) >= self.max_sessions and not self._evict_unused():
            raise TooManySessions(
                f"the gateway already holds {self.max_sessions} MCP sessions, all in use "
                "(mesh.max_sessions); end one with DELETE or wait for idle ones to expire",
                retry_after=min(30.0, self.idle_timeout_s),
            )
        session = ClientSession(
            id=self.id_prefix + secrets.token_urlsafe(24),
            target=target,
            protocol_version=protocol_version,
            client_capabilities=capabilities,
            client_info=client_info,
            keep_events=self.keep_events,
            clock=self.clock,
            principal=principal,
        )
        self.sessions[session.id] = session
        self.per_principal[principal] += 1
        self._ensure_sweeper()
        return session

    def _evict_unused(self) -> bool:
        """End the oldest session that has done nothing since its initialize: its client loses
        least (it initializes again on the 404), and a flood of initializes cannot hold the
        gateway's every session."""
        for sid, session in self.sessions.items():
            if not session.used and not session.requests and not session.get_connected:
                log.info("MCP session %s… ended unused: max_sessions reached", sid[:8])
                self.end(sid)
                return True
        return False

    def get(self, session_id: str) -> ClientSession | None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.last_seen = self.clock()
        return session

    def end(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.per_principal[session.principal] -= 1
        if self.per_principal[session.principal] <= 0:
            del self.per_principal[session.principal]
        session.end()
        return True

    def sweep(self) -> None:
        """End sessions idle past the timeout, and unused ones past the unused timeout; drop
        old closed streams of the others."""
        now = self.clock()
        for sid, session in list(self.sessions.items()):
            busy = session.requests or session.get_connected
            idle = now - session.last_seen
            if not busy and not session.used and now - session.created > self.unused_timeout_s:
                log.info("MCP session %s… ended unused after %.0fs", sid[:8], idle)
                self.end(sid)
            elif not busy and idle > self.idle_timeout_s:
                log.info("MCP session %s… ended after %.0fs idle", sid[:8], idle)
                self.end(sid)
            else:
                session.forget_closed(older_than=self.idle_timeout_s)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="session sweeper")

    async def _sweep_loop(self) -> None:
        while self.sessions:
            await asyncio.sleep(min(30.0, max(0.05, self.unused_timeout_s / 4)))
            self.sweep()

    async def close(self) -> None:
        for sid in list(self.sessions):
            self.end(sid)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
