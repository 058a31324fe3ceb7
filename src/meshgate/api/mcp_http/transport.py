"""The ASGI app behind `/mcp` and `/mcp/{name}`: checks, then the era a request belongs to.

Every request is checked (Origin, the target server) and dispatched by HTTP method; a POST is
checked further (Accept, Content-Type, size, JSON) and goes to the handshake era (`initialize`,
or an `Mcp-Session-Id`) or to the stateless era (the `_meta` envelope or a 2026-07-28
`MCP-Protocol-Version`). Servers' notifications are relayed from here to every session's
standing stream and every matching `subscriptions/listen` stream.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meshgate.api.mcp_http.checks import (
    SESSION_HEADER,
    VERSION_HEADER,
    Reject,
    accepts,
    check_content_type,
    check_origin,
    read_json,
)
from meshgate.api.mcp_http.handshake import HandshakeEra
from meshgate.api.mcp_http.legacy_sse import LegacySse
from meshgate.api.mcp_http.relay import Relayed, SessionRelay
from meshgate.api.mcp_http.stateless import StatelessEra, is_stateless
from meshgate.api.problems import DEFAULT_MAX_JSON_DEPTH
from meshgate.api.responses import dumps
from meshgate.api.routing import IndexedRequest
from meshgate.errors import UnknownService
from meshgate.frontend.server import McpFront
from meshgate.frontend.sessions import SessionStore
from meshgate.upstream.supervisor import Supervisor
from meshgate.wire import jsonrpc
from meshgate.wire.jsonrpc import INVALID_REQUEST, JSON, METHOD_NOT_FOUND
from meshgate.wire.protocol import STATELESS_VERSION

_SESSION_METHODS = frozenset({"POST", "GET", "DELETE"})


class McpHttp:
    """The ASGI app behind `/mcp` and `/mcp/{name}`, and the HTTP+SSE endpoints."""

    def __init__(
        self,
        front: McpFront,
        sessions: SessionStore,
        *,
        max_body_bytes: int,
        allowed_origins: list[str],
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        relay: SessionRelay | None = None,
    ) -> None:
        self.front = front
        self.session_relay = relay  # sessions of other nodes of the cluster
        self.sessions = sessions
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.allowed_origins = set(allowed_origins)
        self.handshake = HandshakeEra(front, sessions)
        self.stateless = StatelessEra(front)
        self.legacy = LegacySse(
            self.handshake,
            max_body_bytes=max_body_bytes,
            max_json_depth=max_json_depth,
            allowed_origins=self.allowed_origins,
            relay=relay,
        )

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, supervisor: Supervisor) -> None:
        for pool in supervisor.pools.values():
            pool.subscribers.add(self._on_server_notification)

    def relay(self, server: str, method: str, params: JSON) -> None:
        """Pass a server's notification on to the sessions and listeners that watch it (the
        sink of pools made after start, such as servers only peer nodes run)."""
        self._on_server_notification(server, method, params)

    def notify_session(self, session_id: str, message: JSON) -> None:
        """Send a message on a session's GET stream, if the session is still there."""
        session = self.sessions.sessions.get(session_id)  # (not a sign of the client's life)
        if session is not None:
            session.emit_standing(message)

    def end_standing_streams(self) -> None:
        """End every stream that would otherwise stay open: GET streams and subscriptions."""
        for listener in list(self.stateless.listeners):
            listener.stream.close()
        for session in self.sessions.sessions.values():
            session.standing.close()

    async def close(self) -> None:
        if self.session_relay is not None:
            await self.session_relay.close()
        self.end_standing_streams()
        self.stateless.parked.close()
        await self.sessions.close()

    def _on_server_notification(self, server: str, method: str, params: JSON) -> None:
        message = dumps(jsonrpc.notification(method, params or None), compact=True)
        uri = params.get("uri") if method == "notifications/resources/updated" else None
        for session in list(self.sessions.sessions.values()):
            if session.target not in (None, server):
                continue
            if uri is not None and uri not in session.subscriptions:
                continue
            session.standing.push(message)
        for listener in list(self.stateless.listeners):
            if listener.target in (None, server) and listener.wants(method, uri):
                listener.push(method, params)

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = IndexedRequest(scope, receive)
        target: str | None = scope.get("path_params", {}).get("name")
        try:
            check_origin(request, self.allowed_origins)
            session_id = request.headers.get(SESSION_HEADER)
            if self.session_relay is not None and session_id and request.method in _SESSION_METHODS:
                owner = self.session_relay.owner(request, session_id)
                if owner is not None:
                    await Relayed(self.session_relay, request, owner)(scope, receive, send)
                    return
            try:
                self.front.check_target(target)
            except UnknownService as e:
                raise Reject(404, METHOD_NOT_FOUND, e.detail) from None
            if request.method == "POST":
                response = await self._post(request, target)
            elif request.method == "GET":
                response = self.handshake.get(request, target)
            elif request.method == "DELETE":
                response = self.handshake.delete(request, target)
            else:
                response = Response(status_code=405, headers={"Allow": "GET, POST, DELETE"})
        except Reject as r:
            response = r.response()
        await response(scope, receive, send)

    async def _post(self, request: Request, target: str | None) -> Response:
        wants_json, wants_sse = accepts(request)
        if not (wants_json or wants_sse):
            return Response(
                "Accept must include application/json or text/event-stream", status_code=406
            )
        check_content_type(request)
        body = await read_json(request, self.max_body_bytes, self.max_json_depth)

        first = body[0] if isinstance(body, list) and body else body
        is_init = isinstance(first, dict) and first.get("method") == "initialize"
        session_id = request.headers.get(SESSION_HEADER)
        modern = request.headers.get(VERSION_HEADER, "").strip() == STATELESS_VERSION
        if is_init and not isinstance(body, list) and not modern:
            return self.handshake.initialize(request, target, body)
        if session_id is not None:
            session = self.handshake.session(request, session_id, target)
            return await self.handshake.post(request, session, body, wants_json, wants_sse)
        if isinstance(body, dict) and is_stateless(request, body):
            return await self.stateless.post(request, target, body, wants_json, wants_sse)
        raise Reject(
            400,
            INVALID_REQUEST,
            "no Mcp-Session-Id header: send initialize first (protocol 2024-11-05 to 2025-11-25), "
            f"or send {STATELESS_VERSION} requests with the protocol envelope in params._meta",
            body.get("id") if isinstance(body, dict) else None,
        )

    # -- the HTTP+SSE transport of 2024-11-05 --------------------------------------------------

    async def legacy_sse(self, request: Request) -> Response:
        """GET /sse or /sse/{name}."""
        return await self.legacy.sse(request)

    async def legacy_messages(self, request: Request) -> Response:
        """POST /messages?session_id=..."""
        return await self.legacy.messages(request)
