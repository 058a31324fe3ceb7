"""The handshake era of MCP Streamable HTTP (protocol 2024-11-05 to 2025-11-25).

`initialize` opens a session, named by the `Mcp-Session-Id` header the client sends back. A
POST in a session carries requests, notifications and responses (batches in 2025-03-26 only);
GET opens the session's standing stream, or resumes a stream from `Last-Event-ID`; DELETE ends
the session. A server's question to the client goes on the stream of the request it came with,
and the client's POSTed response is handed back to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshgate.api.mcp_http.checks import (
    SESSION_HEADER,
    VERSION_HEADER,
    Reject,
    accepts,
    balance_key,
    kind,
    obj,
    progress_token,
)
from meshgate.api.mcp_http.streaming import (
    Channel,
    counted,
    event_stream,
    follow,
    request_key,
    respond,
)
from meshgate.api.responses import json_response
from meshgate.api.routing import unless_disconnected
from meshgate.errors import MeshgateError, SessionInstanceLost
from meshgate.frontend.context import LOG_LEVELS, Ask, Emit, RequestContext, json_rpc_error
from meshgate.frontend.server import LATEST_HANDSHAKE, McpFront
from meshgate.frontend.sessions import ClientSession, SessionStore
from meshgate.observability.topology import CALLER_HEADER
from meshgate.security import principal_of
from meshgate.wire import jsonrpc
from meshgate.wire.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    REQUEST_TIMEOUT,
)
from meshgate.wire.protocol import HANDSHAKE_VERSIONS, STATELESS_VERSION

log = logging.getLogger("meshgate.mcp_http")

ASK_TIMEOUT_S = 120.0  # how long a server's question may wait for the client's answer


class HandshakeEra:
    """Sessions: their initialize, POSTs, GET streams and DELETE."""

    def __init__(self, front: McpFront, sessions: SessionStore) -> None:
        self.front = front
        self.sessions = sessions

    def initialize(self, request: Request, target: str | None, msg: Any) -> Response:
        if kind(msg) != "request":
            raise Reject(400, INVALID_REQUEST, "initialize must be a JSON-RPC request")
        params = msg.get("params") or {}
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise Reject(400, INVALID_PARAMS, "initialize needs params.protocolVersion", msg["id"])
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        caps = obj(params.get("capabilities"))
        info = obj(params.get("clientInfo"))
        try:
            session = self.sessions.create(
                target, version, caps, info, principal=principal_name(request.scope)
            )
            session.caller = request.headers.get(CALLER_HEADER) or info.get("name")
            session.owner = owner(request)
        except MeshgateError as e:
            code, message, data = json_rpc_error(e)
            headers = {**e.headers, "Retry-After": str(math.ceil(e.retry_after or 1))}
            return json_response(
                jsonrpc.error(msg["id"], code, message, data), e.status, headers, compact=True
            )
        result = {"protocolVersion": version, **self.front.describe(target, version)}
        log.info(
            "MCP session %s… for %s: %s (%s)",
            session.id[:8],
            target or "/mcp",
            info.get("name", "?"),
            version,
        )
        return json_response(
            jsonrpc.result(msg["id"], result), headers={"Mcp-Session-Id": session.id}, compact=True
        )

    def session(self, request: Request, session_id: str, target: str | None) -> ClientSession:
        """The session a request names, if it is the caller's: another principal's session is
        not found (404), as one that never was, so that an id is worth nothing to anyone but
        the principal that opened it."""
        session = self.sessions.get(session_id)
        if (
            session is None
            or session.target != target
            or session.legacy
            or session.owner != owner(request)
        ):
            raise Reject(404, INVALID_REQUEST, "session not found or ended; initialize again")
        return session

    def _check_version(self, request: Request, session: ClientSession, id_: Any) -> None:
        header = request.headers.get(VERSION_HEADER)
        if header is not None and header != session.protocol_version:
            raise Reject(
                400,
                INVALID_REQUEST,
                f"MCP-Protocol-Version {header!r} does not match the session's "
                f"{session.protocol_version!r}",
                id_,
            )

    async def post(
        self,
        request: Request,
        session: ClientSession,
        body: Any,
        wants_json: bool,
        wants_sse: bool,
    ) -> Response:
        messages = body if isinstance(body, list) else [body]
        self._check_version(request, session, None)
        if isinstance(body, list):
            if session.protocol_version != "2025-03-26":
                raise Reject(
                    400,
                    INVALID_REQUEST,
                    f"batches are not part of protocol {session.protocol_version} "
                    "(only 2025-03-26 has them)",
                )
            if not body:
                raise Reject(400, INVALID_REQUEST, "an empty batch")
        kinds = [kind(m) for m in messages]
        requests = [m for m, k in zip(messages, kinds, strict=True) if k == "request"]
        if requests:
            session.used = True  # no longer the first to go when sessions run out
        invalid = [m for m, k in zip(messages, kinds, strict=True) if k == "invalid"]
        if invalid and not isinstance(body, list):
            raise Reject(
                400, INVALID_REQUEST, "not a JSON-RPC 2.0 request, notification or response"
            )
        for m, k in zip(messages, kinds, strict=True):
            if k == "notification":
                self.client_notification(session, m)
            elif k == "response":
                client_response(session, m)
        replies: list[JSON] = [
            jsonrpc.error(None, INVALID_REQUEST, "invalid message") for _ in invalid
        ]
        if not requests:
            if replies:
                return json_response(replies, 400, compact=True)
            return Response(status_code=202)
        if len(requests) == 1 and not isinstance(body, list):
            msg = requests[0]
            channel = Channel(msg["id"], session if wants_sse else None, sse=wants_sse)
            return await respond(
                request,
                channel,
                _with_status(self.work(session, msg, channel.emit, request)),
                session=session,
                priming=session.protocol_version >= "2025-11-25",
            )
        # A 2025-03-26 batch: answered as a JSON array, without notifications.
        replies += await unless_disconnected(
            request,
            asyncio.gather(*(self.work(session, m, None, request) for m in requests)),
        )
        return json_response(replies, compact=True)

    def client_notification(self, session: ClientSession, msg: JSON) -> None:
        method = msg["method"]
        params = obj(msg.get("params"))
        if method == "notifications/initialized":
            session.initialized = True
        elif method == "notifications/cancelled":
            task = session.requests.get(request_key(params.get("requestId")))
            if task is not None:
                log.info(
                    "MCP session %s… cancelled request %s", session.id[:8], params.get("requestId")
                )
                task.cancel()

    async def work(
        self, session: ClientSession, msg: JSON, emit: Emit | None, request: Request
    ) -> JSON:
        """The reply to one request of a session."""
        id_, method = msg["id"], msg["method"]
        if method == "initialize":
            return jsonrpc.error(id_, INVALID_REQUEST, "the session is already initialized")
        params = msg.get("params") or {}
        if method == "logging/setLevel":
            # Upstream instances are shared: the level filters what this session is sent.
            level = params.get("level")
            if level not in LOG_LEVELS:
                return jsonrpc.error(id_, INVALID_PARAMS, f"'level' must be one of {LOG_LEVELS}")
            session.log_level = level
            return jsonrpc.result(id_, {})
        ctx = RequestContext(
            version=session.protocol_version,
            stateless=False,
            emit=emit,
            progress_token=progress_token(msg),
            log_level=session.log_level,
            key=balance_key(
                self.front,
                session.target,
                session.id,
                request.client.host if request.client else None,
                params,
            ),
            ask=_asker(session, emit) if emit is not None else None,
            client_capabilities=session.client_capabilities,
            pins=session.pins,
            caller=session.caller,
            headers=request.headers,
            principal=principal_of(request.scope),
            session=session.id,
            session_ask=_asker(session, session.emit_standing),
            session_emit=session.emit_standing,
        )
        try:
            result = await self.front.dispatch(session.target, method, params, ctx)
        except SessionInstanceLost as e:
            # The session's state died with its instance: end it, so the client starts anew.
            log.info("MCP session %s… ended: %s", session.id[:8], e.detail)
            self.sessions.end(session.id)
            return jsonrpc.error(id_, e.jsonrpc_code, e.detail, {"type": e.type})
        except (MeshgateError, jsonrpc.JsonRpcError) as e:
            code, message, data = json_rpc_error(e)
            return jsonrpc.error(id_, code, message, data)
        _track_subscription(session, method, params)
        return jsonrpc.result(id_, result)

    def get(self, request: Request, target: str | None) -> Response:
        """The session's standing stream, or the rest of a stream from `Last-Event-ID`."""
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            if request.headers.get(VERSION_HEADER) == STATELESS_VERSION:
                return Response(status_code=405, headers={"Allow": "POST"})
            raise Reject(400, INVALID_REQUEST, "GET needs an Mcp-Session-Id header")
        _, wants_sse = accepts(request)
        if not wants_sse:
            return Response("Accept must include text/event-stream", status_code=406)
        session = self.session(request, session_id, target)
        self._check_version(request, session, None)
        session.used = True
        stream, after = session.standing, session.standing.last
        last_event = request.headers.get("last-event-id")
        if last_event:
            found = session.find(last_event)
            if found is not None:
                stream, after = found
        return event_stream(counted(session, follow(stream, after, priming=False)))

    def delete(self, request: Request, target: str | None) -> Response:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            raise Reject(400, INVALID_REQUEST, "DELETE needs an Mcp-Session-Id header")
        self.session(request, session_id, target)
        self.sessions.end(session_id)
        log.info("MCP session %s… ended by the client", session_id[:8])
        return Response(status_code=204)


def owner(request: Request) -> tuple[str, str]:
    """Who a session belongs to: the name and kind of credential of the principal that opened
    it (its roles may change from token to token; who it is may not). A request a peer node
    relayed is the original caller's, as the node's signature asserts it."""
    principal = principal_of(request.scope)
    if principal.via == "node":
        return principal.name, str(principal.claims.get("caller_via"))
    return principal.name, principal.via


def _track_subscription(session: ClientSession, method: str, params: JSON) -> None:
    uri = params.get("uri")
    if method == "resources/subscribe" and isinstance(uri, str):
        session.subscriptions.add(uri)
    elif method == "resources/unsubscribe" and isinstance(uri, str):
        session.subscriptions.discard(uri)


def _asker(session: ClientSession, emit: Emit) -> Ask:
    """Send a server's request to the session's client on the stream of the request it came
    with; the client POSTs its response, which `client_response` hands back."""

    async def ask(method: str, params: JSON) -> JSON:
        session.asks += 1
        id_ = f"meshgate-{session.asks}"
        fut: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        session.asked[id_] = fut
        emit(jsonrpc.request(id_, method, params))
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                return await fut
        except TimeoutError:
            raise jsonrpc.JsonRpcError(
                REQUEST_TIMEOUT, f"the client did not answer {method} within {ASK_TIMEOUT_S}s"
            ) from None
        finally:
            session.asked.pop(id_, None)

    return ask


def client_response(session: ClientSession, msg: JSON) -> None:
    """Hand a client's response to the server's question that is waiting for it."""
    fut = session.asked.pop(str(msg.get("id")), None)
    if fut is None or fut.done():
        log.debug("MCP session %s…: response to nothing asked: %r", session.id[:8], msg.get("id"))
        return
    if isinstance(msg.get("result"), dict):
        fut.set_result(msg["result"])
    else:
        err = obj(msg.get("error"))
        fut.set_exception(
            jsonrpc.JsonRpcError(
                int(err.get("code", INTERNAL_ERROR)),
                str(err.get("message", "error")),
                err.get("data"),
            )
        )


async def _with_status(reply: Awaitable[JSON]) -> tuple[int, JSON]:
    """A session's reply with its HTTP status: 404 once its sticky instance is lost (the
    client then starts a new session, as the transport specifies), else 200."""
    body = await reply
    lost = obj(obj(body.get("error")).get("data")).get("type") == SessionInstanceLost.type
    return (404 if lost else 200), body


def principal_name(scope: Any) -> str:
    """Whose session an initialize opens (`local` for everyone while authentication is off:
    then only max_sessions bounds them)."""
    return principal_of(scope).name
