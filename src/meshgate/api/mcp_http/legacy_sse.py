"""The HTTP+SSE transport of protocol 2024-11-05: `GET /sse` and `POST /messages`.

A GET opens a session whose every message from the gateway goes on that one stream; its first
event names the endpoint the client POSTs its messages to. The stream is the session: it ends
when the stream closes. Requests are answered as the handshake era answers them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from meshgate.api.mcp_http.checks import Reject, check_origin, kind, obj, read_json
from meshgate.api.mcp_http.handshake import (
    HandshakeEra,
    client_response,
    owner,
    principal_name,
)
from meshgate.api.mcp_http.relay import Relayed, SessionRelay
from meshgate.api.mcp_http.streaming import counted, event_stream, follow, track
from meshgate.errors import MeshgateError, UnknownService
from meshgate.frontend.server import LATEST_HANDSHAKE
from meshgate.frontend.sessions import ClientSession
from meshgate.wire import jsonrpc
from meshgate.wire.jsonrpc import INVALID_REQUEST, JSON, METHOD_NOT_FOUND, REQUEST_CANCELLED
from meshgate.wire.protocol import HANDSHAKE_VERSIONS

log = logging.getLogger("meshgate.mcp_http")

LEGACY_SSE_VERSION = "2024-11-05"  # the version of the HTTP+SSE transport


class LegacySse:
    """Sessions of the HTTP+SSE transport, answered by the handshake era."""

    def __init__(
        self,
        handshake: HandshakeEra,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        allowed_origins: set[str],
        relay: SessionRelay | None = None,
    ) -> None:
        self.relay = relay
        self.handshake = handshake
        self.front = handshake.front
        self.sessions = handshake.sessions
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.allowed_origins = allowed_origins

    async def sse(self, request: Request) -> Response:
        """GET /sse or /sse/{name}: a session whose every message from the gateway goes on this
        stream; the first event names the endpoint to POST the client's messages to."""
        target: str | None = request.path_params.get("name")
        try:
            check_origin(request, self.allowed_origins)
            self.front.check_target(target)
        except Reject as r:
            return r.response()
        except UnknownService as e:
            return Reject(404, METHOD_NOT_FOUND, e.detail).response()
        try:
            session = self.sessions.create(
                target, LEGACY_SSE_VERSION, {}, {}, principal=principal_name(request.scope)
            )
        except MeshgateError as e:
            retry = str(math.ceil(e.retry_after or 1))
            return Response(
                e.detail, status_code=e.status, headers={**e.headers, "Retry-After": retry}
            )
        session.legacy = True
        session.used = True  # its stream is open for as long as the session lives
        session.owner = owner(request)
        endpoint = f"{request.scope.get('root_path', '')}/messages?session_id={session.id}"
        log.info("MCP session %s… over HTTP+SSE for %s", session.id[:8], target or "/mcp")

        async def events() -> AsyncIterator[str]:
            try:
                yield f"event: endpoint\ndata: {endpoint}\n\n"
                async for chunk in counted(session, follow(session.standing, 0, priming=False)):
                    yield chunk
            finally:
                self.sessions.end(session.id)  # the stream is the session

        return event_stream(events())

    async def messages(self, request: Request) -> Response:
        """POST /messages?session_id=...: the client's messages; answers go on its stream."""
        try:
            check_origin(request, self.allowed_origins)
            session_id = request.query_params.get("session_id", "")
            if self.relay is not None and session_id:
                elsewhere = self.relay.owner(request, session_id)
                if elsewhere is not None:
                    return Relayed(self.relay, request, elsewhere)
            session = self.sessions.get(session_id)
            if session is None or not session.legacy or session.owner != owner(request):
                raise Reject(404, INVALID_REQUEST, "no HTTP+SSE session with that session_id")
            msg = await read_json(request, self.max_body_bytes, self.max_json_depth)
        except Reject as r:
            return r.response()
        msg_kind = kind(msg)
        if msg_kind == "notification":
            self.handshake.client_notification(session, msg)
        elif msg_kind == "response":
            client_response(session, msg)
        elif msg_kind == "request":
            track(session, msg["id"], asyncio.create_task(self._request(session, msg, request)))
        else:
            return Reject(400, INVALID_REQUEST, "not a JSON-RPC message").response()
        return Response("Accepted", status_code=202)

    async def _request(self, session: ClientSession, msg: JSON, request: Request) -> None:
        emit = session.emit_standing
        if msg["method"] == "initialize":
            params = obj(msg.get("params"))
            requested = params.get("protocolVersion")
            version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
            session.protocol_version = str(version)
            session.client_capabilities = obj(params.get("capabilities"))
            session.client_info = obj(params.get("clientInfo"))
            result = {"protocolVersion": version, **self.front.describe(session.target, version)}
            emit(jsonrpc.result(msg["id"], result))
            return
        try:
            reply = await self.handshake.work(session, msg, emit, request)
        except asyncio.CancelledError:
            reply = jsonrpc.error(msg["id"], REQUEST_CANCELLED, "request cancelled")
        emit(reply)
