"""MCP Streamable HTTP: `/mcp` (every server) and `/mcp/{name}` (one server), both eras.

- Handshake era (2024-11-05 .. 2025-11-25): `initialize` opens a session (`Mcp-Session-Id`);
  POST carries requests, notifications and responses (batches in 2025-03-26); GET opens the
  session's standing stream; DELETE ends the session; streams resume with `Last-Event-ID`.
- Stateless era (2026-07-28): one request per POST with the protocol envelope in
  `params._meta`, checked against the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
  headers; results carry `resultType` and, for lists, cache hints; `subscriptions/listen`
  streams notifications.

A request is answered with JSON, or with Server-Sent Events when the client accepts them and
asked for progress (or accepts nothing else). Requests with an Origin header are refused
unless the origin is loopback or configured (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import urlsplit

from mcp.shared.inbound import decode_header_value, validate_mcp_param_headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from meshgate.api.problems import read_body
from meshgate.api.responses import dumps, json_response
from meshgate.api.routing import unless_disconnected
from meshgate.errors import MeshgateError, PayloadTooLarge, SessionInstanceLost, UnknownService
from meshgate.frontend.input_required import INPUT_METHODS, WRAPPED_PREFIX, Parked, ParkedCalls
from meshgate.frontend.server import (
    LATEST_HANDSHAKE,
    LOG_LEVELS,
    Ask,
    Emit,
    McpFront,
    RequestContext,
    json_rpc_error,
)
from meshgate.frontend.sessions import ClientSession, EventStream, SessionStore
from meshgate.observability.topology import CALLER_HEADER
from meshgate.router import hash_key
from meshgate.upstream.supervisor import Supervisor
from meshgate.wire import jsonrpc
from meshgate.wire.jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    REQUEST_TIMEOUT,
    RESOURCE_NOT_FOUND,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from meshgate.wire.protocol import (
    HANDSHAKE_VERSIONS,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_SERVER_INFO,
    META_VERSION,
    STATELESS_VERSION,
)

log = logging.getLogger("meshgate.mcp_http")

LEGACY_SSE_VERSION = "2024-11-05"  # the version of the HTTP+SSE transport
ASK_TIMEOUT_S = 120.0  # how long a server's question may wait for the client's answer
MRTR_FIELDS = ("inputResponses", "requestState")
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
HEARTBEAT_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
NAME_BEARING = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}
CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
# The HTTP status of a stateless-era JSON-RPC error; others are answered with 200.
ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    MISSING_CAPABILITY: 400,
    METHOD_NOT_FOUND: 404,
}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SUBSCRIPTION_KEYS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}


class _Reject(Exception):
    """Answer at once with this HTTP status and a JSON-RPC error body."""

    def __init__(
        self, status: int, code: int, message: str, id_: Any = None, data: Any = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.id, self.data = status, code, message, id_, data

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return _json(
            jsonrpc.error(self.id, self.code, self.message, self.data), self.status, headers
        )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return json_response(body, status, headers, compact=True)


def _sse(event_id: str | None, data: str) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: message\ndata: {data}\n\n"


def _accepts(request: Request) -> tuple[bool, bool]:
    """(JSON, SSE) acceptance, with wildcards; no Accept header accepts both."""
    header = request.headers.get("accept")
    if not header:
        return True, True
    types = {t.split(";")[0].strip().lower() for t in header.split(",")}
    wild = "*/*" in types
    return (
        wild or bool(types & {"application/json", "application/*"}),
        wild or bool(types & {"text/event-stream", "text/*"}),
    )


def _kind(msg: Any) -> str:
    """'request', 'notification', 'response' or 'invalid'."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return "invalid"
    if isinstance(msg.get("method"), str):
        if "id" not in msg:
            return "notification"
        id_ = msg["id"]
        ok_id = isinstance(id_, str | int) and not isinstance(id_, bool)
        params = msg.get("params")
        return "request" if ok_id and (params is None or isinstance(params, dict)) else "invalid"
    if "id" in msg and ("result" in msg or "error" in msg):
        return "response"
    return "invalid"


class McpHttp:
    """The ASGI app behind `/mcp` and `/mcp/{name}`."""

    def __init__(
        self,
        front: McpFront,
        sessions: SessionStore,
        *,
        max_body_bytes: int,
        allowed_origins: list[str],
    ) -> None:
        self.front = front
        self.sessions = sessions
        self.max_body_bytes = max_body_bytes
        self.allowed_origins = set(allowed_origins)
        self.listeners: set[_Listener] = set()
        self.parked = ParkedCalls()

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, supervisor: Supervisor) -> None:
        for pool in supervisor.pools.values():
            pool.subscribers.add(self._on_server_notification)

    def notify_session(self, session_id: str, message: JSON) -> None:
        """Send a message on a session's GET stream, if the session is still there."""
        session = self.sessions.sessions.get(session_id)  # (not a sign of the client's life)
        if session is not None:
            session.emit_standing(message)

    def end_standing_streams(self) -> None:
        """End every stream that would otherwise stay open: GET streams and subscriptions."""
        for listener in list(self.listeners):
            listener.stream.close()
        for session in self.sessions.sessions.values():
            session.standing.close()

    async def close(self) -> None:
        self.end_standing_streams()
        self.parked.close()
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
        for listener in list(self.listeners):
            if listener.target in (None, server) and listener.wants(method, uri):
                listener.push(method, params)

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        target: str | None = scope.get("path_params", {}).get("name")
        try:
            self._check_origin(request)
            try:
                self.front.check_target(target)
            except UnknownService as e:
                raise _Reject(404, METHOD_NOT_FOUND, e.detail) from None
            if request.method == "POST":
                response = await self._post(request, target)
            elif request.method == "GET":
                response = await self._get(request, target)
            elif request.method == "DELETE":
                response = self._delete(request, target)
            else:
                response = Response(status_code=405, headers={"Allow": "GET, POST, DELETE"})
        except _Reject as r:
            response = r.response()
        await response(scope, receive, send)

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON, within the size limit; 413 or a parse error otherwise."""
        try:
            raw = await read_body(request, self.max_body_bytes)
        except PayloadTooLarge as e:
            raise _Reject(413, INVALID_REQUEST, e.detail) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise _Reject(400, PARSE_ERROR, f"parse error: {e}") from None

    def _check_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is None or origin in self.allowed_origins or "*" in self.allowed_origins:
            return
        host = urlsplit(origin).hostname
        if host is None or host.lower() not in LOOPBACK_HOSTS:
            raise _Reject(
                403,
                INVALID_REQUEST,
                f"origin {origin!r} is not allowed; add it to mesh.allowed_origins to permit it",
            )

    # -- POST ----------------------------------------------------------------------------------

    async def _post(self, request: Request, target: str | None) -> Response:
        wants_json, wants_sse = _accepts(request)
        if not (wants_json or wants_sse):
            return Response(
                "Accept must include application/json or text/event-stream", status_code=406
            )
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if ctype.lower() != "application/json":
            raise _Reject(415, INVALID_REQUEST, "Content-Type must be application/json")
        body = await self._read_json(request)

        first = body[0] if isinstance(body, list) and body else body
        is_init = isinstance(first, dict) and first.get("method") == "initialize"
        session_id = request.headers.get(SESSION_HEADER)
        modern = request.headers.get(VERSION_HEADER, "").strip() == STATELESS_VERSION
        if is_init and not isinstance(body, list) and not modern:
            return self._initialize(request, target, body)
        if session_id is not None:
            session = self._session(session_id, target)
            return await self._post_session(request, session, body, wants_json, wants_sse)
        if isinstance(body, dict) and self._is_stateless(request, body):
            return await self._post_stateless(request, target, body, wants_json, wants_sse)
        raise _Reject(
            400,
            INVALID_REQUEST,
            "no Mcp-Session-Id header: send initialize first (protocol 2024-11-05 to 2025-11-25), "
            f"or send {STATELESS_VERSION} requests with the protocol envelope in params._meta",
            body.get("id") if isinstance(body, dict) else None,
        )

    # -- handshake era -------------------------------------------------------------------------

    def _initialize(self, request: Request, target: str | None, msg: Any) -> Response:
        if _kind(msg) != "request":
            raise _Reject(400, INVALID_REQUEST, "initialize must be a JSON-RPC request")
        params = msg.get("params") or {}
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise _Reject(400, INVALID_PARAMS, "initialize needs params.protocolVersion", msg["id"])
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        caps = _obj(params.get("capabilities"))
        info = _obj(params.get("clientInfo"))
        try:
            session = self.sessions.create(target, version, caps, info)
            session.caller = request.headers.get(CALLER_HEADER) or info.get("name")
        except MeshgateError as e:
            code, message, data = json_rpc_error(e)
            headers = {"Retry-After": str(int(e.retry_after or 1))}
            return _json(jsonrpc.error(msg["id"], code, message, data), e.status, headers)
        result = {"protocolVersion": version, **self.front.describe(target, version)}
        log.info(
            "MCP session %s… for %s: %s (%s)",
            session.id[:8],
            target or "/mcp",
            info.get("name", "?"),
            version,
        )
        return _json(jsonrpc.result(msg["id"], result), headers={"Mcp-Session-Id": session.id})

    def _session(self, session_id: str, target: str | None) -> ClientSession:
        session = self.sessions.get(session_id)
        if session is None or session.target != target or session.legacy:
            raise _Reject(404, INVALID_REQUEST, "session not found or ended; initialize again")
        return session

    def _check_session_version(self, request: Request, session: ClientSession, id_: Any) -> None:
        header = request.headers.get(VERSION_HEADER)
        if header is not None and header != session.protocol_version:
            raise _Reject(
                400,
                INVALID_REQUEST,
                f"MCP-Protocol-Version {header!r} does not match the session's "
                f"{session.protocol_version!r}",
                id_,
            )

    async def _post_session(
        self,
        request: Request,
        session: ClientSession,
        body: Any,
        wants_json: bool,
        wants_sse: bool,
    ) -> Response:
        messages = body if isinstance(body, list) else [body]
        self._check_session_version(request, session, None)
        if isinstance(body, list):
            if session.protocol_version != "2025-03-26":
                raise _Reject(
                    400,
                    INVALID_REQUEST,
                    f"batches are not part of protocol {session.protocol_version} "
                    "(only 2025-03-26 has them)",
                )
            if not body:
                raise _Reject(400, INVALID_REQUEST, "an empty batch")
        kinds = [_kind(m) for m in messages]
        requests = [m for m, k in zip(messages, kinds, strict=True) if k == "request"]
        invalid = [m for m, k in zip(messages, kinds, strict=True) if k == "invalid"]
        if invalid and not isinstance(body, list):
            raise _Reject(
                400, INVALID_REQUEST, "not a JSON-RPC 2.0 request, notification or response"
            )
        for m, k in zip(messages, kinds, strict=True):
            if k == "notification":
                self._client_notification(session, m)
            elif k == "response":
                _client_response(session, m)
        replies: list[JSON] = [
            jsonrpc.error(None, INVALID_REQUEST, "invalid message") for _ in invalid
        ]
        if not requests:
            if replies:
                return _json(replies, 400)
            return Response(status_code=202)
        if len(requests) == 1 and not isinstance(body, list):
            msg = requests[0]
            channel = _Channel(msg["id"], session if wants_sse else None, sse=wants_sse)
            return await self._respond(
                request,
                channel,
                _with_status(self._session_work(session, msg, channel.emit, request)),
                session=session,
                priming=session.protocol_version >= "2025-11-25",
            )
        # A 2025-03-26 batch: answered as a JSON array, without notifications.
        replies += await unless_disconnected(
            request,
            asyncio.gather(*(self._session_work(session, m, None, request) for m in requests)),
        )
        return _json(replies)

    def _client_notification(self, session: ClientSession, msg: JSON) -> None:
        method = msg["method"]
        params = _obj(msg.get("params"))
        if method == "notifications/initialized":
            session.initialized = True
        elif method == "notifications/cancelled":
            task = session.requests.get(json.dumps(params.get("requestId")))
            if task is not None:
                log.info(
                    "MCP session %s… cancelled request %s", session.id[:8], params.get("requestId")
                )
                task.cancel()

    async def _session_work(
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
            progress_token=_progress_token(msg),
            log_level=session.log_level,
            key=self._key(
                session.target,
                session.id,
                request.client.host if request.client else None,
                params,
            ),
            ask=_session_asker(session, emit) if emit is not None else None,
            client_capabilities=session.client_capabilities,
            pins=session.pins,
            caller=session.caller,
            headers=request.headers,
            session=session.id,
            session_ask=_session_asker(session, session.emit_standing),
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
        self._track_subscription(session, method, params)
        return jsonrpc.result(id_, result)

    async def _respond(
        self,
        request: Request,
        channel: _Channel,
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
            key = json.dumps(id_)
            session.requests[key] = task
            task.add_done_callback(lambda t: _unregister(session, key, t))
        try:
            await unless_disconnected(request, channel.first)
        except asyncio.CancelledError:
            task.cancel()
            raise
        stream = channel.stream
        if stream is None:
            status, reply = channel.outcome or (200, jsonrpc.error(id_, INTERNAL_ERROR, "no reply"))
            return _json(reply, status)
        chunks = _follow(stream, 0, priming=priming, ids=session is not None)
        return StreamingResponse(
            chunks if session is not None else _owning(task, chunks),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    def _track_subscription(self, session: ClientSession, method: str, params: JSON) -> None:
        uri = params.get("uri")
        if method == "resources/subscribe" and isinstance(uri, str):
            session.subscriptions.add(uri)
        elif method == "resources/unsubscribe" and isinstance(uri, str):
            session.subscriptions.discard(uri)

    # -- the HTTP+SSE transport of 2024-11-05 ----------------------------------------------------

    async def legacy_sse(self, request: Request) -> Response:
        """GET /sse or /sse/{name}: a session whose every message from the gateway goes on this
        stream; the first event names the endpoint to POST the client's messages to."""
        target: str | None = request.path_params.get("name")
        try:
            self._check_origin(request)
            self.front.check_target(target)
        except _Reject as r:
            return r.response()
        except UnknownService as e:
            return _Reject(404, METHOD_NOT_FOUND, e.detail).response()
        try:
            session = self.sessions.create(target, LEGACY_SSE_VERSION, {}, {})
        except MeshgateError as e:
            return Response(e.detail, status_code=e.status, headers={"Retry-After": "1"})
        session.legacy = True
        endpoint = f"{request.scope.get('root_path', '')}/messages?session_id={session.id}"
        log.info("MCP session %s… over HTTP+SSE for %s", session.id[:8], target or "/mcp")

        async def events() -> AsyncIterator[str]:
            try:
                yield f"event: endpoint\ndata: {endpoint}\n\n"
                async for chunk in _counted(session, _follow(session.standing, 0, priming=False)):
                    yield chunk
            finally:
                self.sessions.end(session.id)  # the stream is the session

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def legacy_messages(self, request: Request) -> Response:
        """POST /messages?session_id=...: the client's messages; answers go on its stream."""
        try:
            self._check_origin(request)
            session = self.sessions.get(request.query_params.get("session_id", ""))
            if session is None or not session.legacy:
                raise _Reject(404, INVALID_REQUEST, "no HTTP+SSE session with that session_id")
            msg = await self._read_json(request)
        except _Reject as r:
            return r.response()
        kind = _kind(msg)
        if kind == "notification":
            self._client_notification(session, msg)
        elif kind == "response":
            _client_response(session, msg)
        elif kind == "request":
            task = asyncio.create_task(self._legacy_request(session, msg, request))
            session.requests[json.dumps(msg["id"])] = task
            task.add_done_callback(lambda t: _unregister(session, json.dumps(msg["id"]), t))
        else:
            return _Reject(400, INVALID_REQUEST, "not a JSON-RPC message").response()
        return Response("Accepted", status_code=202)

    async def _legacy_request(self, session: ClientSession, msg: JSON, request: Request) -> None:
        def emit(note: JSON) -> None:
            session.standing.push(dumps(note, compact=True))

        if msg["method"] == "initialize":
            params = _obj(msg.get("params"))
            requested = params.get("protocolVersion")
            version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
            session.protocol_version = str(version)
            session.client_capabilities = _obj(params.get("capabilities"))
            session.client_info = _obj(params.get("clientInfo"))
            result = {"protocolVersion": version, **self.front.describe(session.target, version)}
            emit(jsonrpc.result(msg["id"], result))
            return
        try:
            reply = await self._session_work(session, msg, emit, request)
        except asyncio.CancelledError:
            reply = jsonrpc.error(msg["id"], REQUEST_CANCELLED, "request cancelled")
        emit(reply)

    # -- GET and DELETE ------------------------------------------------------------------------

    async def _get(self, request: Request, target: str | None) -> Response:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            if request.headers.get(VERSION_HEADER) == STATELESS_VERSION:
                return Response(status_code=405, headers={"Allow": "POST"})
            raise _Reject(400, INVALID_REQUEST, "GET needs an Mcp-Session-Id header")
        _, wants_sse = _accepts(request)
        if not wants_sse:
            return Response("Accept must include text/event-stream", status_code=406)
        session = self._session(session_id, target)
        self._check_session_version(request, session, None)
        stream, after = session.standing, session.standing.last
        last_event = request.headers.get("last-event-id")
        if last_event:
            found = session.find(last_event)
            if found is not None:
                stream, after = found
        return StreamingResponse(
            _counted(session, _follow(stream, after, priming=False)),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    def _delete(self, request: Request, target: str | None) -> Response:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            raise _Reject(400, INVALID_REQUEST, "DELETE needs an Mcp-Session-Id header")
        self._session(session_id, target)
        self.sessions.end(session_id)
        log.info("MCP session %s… ended by the client", session_id[:8])
        return Response(status_code=204)

    # -- stateless era -------------------------------------------------------------------------

    def _is_stateless(self, request: Request, msg: JSON) -> bool:
        header = request.headers.get(VERSION_HEADER)
        if header is not None and header not in HANDSHAKE_VERSIONS:
            return True  # 2026-07-28, or a version we will refuse with a clear error
        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        return isinstance(meta, dict) and META_VERSION in meta

    async def _post_stateless(
        self,
        request: Request,
        target: str | None,
        msg: JSON,
        wants_json: bool,
        wants_sse: bool,
    ) -> Response:
        kind = _kind(msg)
        if kind == "notification":
            self._check_version(request.headers.get(VERSION_HEADER) or "", None)
            return Response(status_code=202)
        if kind != "request":
            raise _Reject(
                400, INVALID_REQUEST, "the body must be one JSON-RPC request or notification"
            )
        id_, method = msg["id"], msg["method"]
        params: JSON = msg.get("params") or {}
        version = self._check_envelope(request, msg, params)
        if method == "subscriptions/listen":
            if not wants_sse:
                return Response(
                    "subscriptions/listen answers with text/event-stream", status_code=406
                )
            return self._listen(target, id_, params)
        channel = _Channel(id_, None, sse=wants_sse)
        name_key = NAME_BEARING.get(method)
        name = params.get(name_key) if name_key else None
        state = params.get("requestState")
        upstream_state = isinstance(state, str) and state.startswith(WRAPPED_PREFIX)
        if "requestState" in params and not upstream_state:  # a retry with the client's answers
            try:
                parked = self.parked.claim(params["requestState"], method, name)
            except jsonrpc.JsonRpcError as e:
                raise _Reject(400, e.code, e.message, id_) from None
            parked.answer(params.get("inputResponses"))
            parked.emit = channel.emit
            return await self._respond(
                request,
                channel,
                self._next_round(parked, id_, target, method, params),
                session=None,
            )
        if method in INPUT_METHODS and not upstream_state:  # answers without a round to answer
            params = {k: v for k, v in params.items() if k not in MRTR_FIELDS}
        meta = _obj(params.get("_meta"))
        level = meta.get("io.modelcontextprotocol/logLevel")
        ctx = RequestContext(
            version=version,
            stateless=True,
            emit=channel.emit,
            progress_token=_progress_token(msg),
            # Without a level in the envelope a stateless client gets no log messages.
            log_level=level if level in LOG_LEVELS else None,
            send_logs=level in LOG_LEVELS,
            key=self._key(target, None, request.client.host if request.client else None, params),
            client_capabilities=_obj(meta.get(META_CAPABILITIES)),
            caller=request.headers.get(CALLER_HEADER)
            or _obj(meta.get(META_CLIENT_INFO)).get("name"),
            headers=request.headers,
        )
        if method in INPUT_METHODS:
            # The server may ask the client something mid-call: the call is parked, and each
            # question comes back to the client as an input_required result.
            parked = self.parked.park(method, name)
            parked.emit = channel.emit
            ctx.emit, ctx.ask, ctx.waiting = parked.relay, parked.ask, parked.is_waiting
            parked.task = asyncio.ensure_future(self.front.dispatch(target, method, params, ctx))
            return await self._respond(
                request,
                channel,
                self._next_round(parked, id_, target, method, params),
                session=None,
            )

        async def work() -> tuple[int, JSON]:
            try:
                result = await self.front.dispatch(target, method, params, ctx)
            except (MeshgateError, jsonrpc.JsonRpcError) as e:
                return self._stateless_error(e, id_, method, params)
            return 200, jsonrpc.result(id_, self._stamp(target, method, result))

        return await self._respond(request, channel, work(), session=None)

    async def _next_round(
        self, parked: Parked, id_: Any, target: str | None, method: str, params: JSON
    ) -> tuple[int, JSON]:
        """The reply to one round of a parked call: its result, or its open questions."""
        try:
            done = await parked.next()
        except asyncio.CancelledError:
            parked.cancel("the client closed the request")  # the stateless way to cancel
            self.parked.release(parked)
            raise
        if not done:
            try:
                state = self.parked.state(parked)
            except jsonrpc.JsonRpcError as e:  # too many calls wait for their clients already
                parked.cancel(e.message)
                return 503, jsonrpc.error(id_, e.code, e.message)
            result: JSON = {
                "resultType": "input_required",
                "inputRequests": parked.open_questions(),
                "requestState": state,
                "_meta": {META_SERVER_INFO: self.front.server_info(target)},
            }
            return 200, jsonrpc.result(id_, result)
        self.parked.release(parked)
        assert parked.task is not None
        try:
            value = parked.task.result()
        except (MeshgateError, jsonrpc.JsonRpcError) as e:
            return self._stateless_error(e, id_, method, params)
        except asyncio.CancelledError:
            return 200, jsonrpc.error(id_, REQUEST_CANCELLED, "request cancelled")
        return 200, jsonrpc.result(id_, self._stamp(target, method, value))

    def _stateless_error(
        self, e: MeshgateError | jsonrpc.JsonRpcError, id_: Any, method: str, params: JSON
    ) -> tuple[int, JSON]:
        code, message, data = json_rpc_error(e)
        if code == RESOURCE_NOT_FOUND and method == "resources/read":
            # A handshake-era server's "resource not found", as 2026-07-28 names it.
            code, data = INVALID_PARAMS, {**_obj(data), "uri": params.get("uri")}
        return ERROR_STATUS.get(code, 200), jsonrpc.error(id_, code, message, data)

    def _check_version(self, version: str, id_: Any) -> None:
        if version != STATELESS_VERSION:
            raise _Reject(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                id_,
                {"supported": [STATELESS_VERSION], "requested": version},
            )

    def _check_envelope(self, request: Request, msg: JSON, params: JSON) -> str:
        id_, method = msg["id"], msg["method"]
        meta = params.get("_meta")
        if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
            raise _Reject(
                400,
                INVALID_PARAMS,
                f"params._meta must carry {META_VERSION!r} and {META_CAPABILITIES!r}",
                id_,
            )
        version = meta[META_VERSION]
        headers = {k: v.strip(" \t") for k, v in request.headers.items()}  # RFC 9110 OWS
        if headers.get(VERSION_HEADER) != version:
            raise _Reject(
                400,
                HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match params._meta's protocol version",
                id_,
            )
        if headers.get(METHOD_HEADER) != method:
            raise _Reject(400, HEADER_MISMATCH, "Mcp-Method header does not match the method", id_)
        name_key = NAME_BEARING.get(method)
        if (
            name_key is not None
            and params.get(name_key) is not None
            and decode_header_value(headers.get(NAME_HEADER)) != params.get(name_key)
        ):
            raise _Reject(
                400, HEADER_MISMATCH, f"Mcp-Name header does not match params.{name_key}", id_
            )
        if not isinstance(version, str):
            raise _Reject(400, INVALID_PARAMS, "the protocol version must be a string", id_)
        self._check_version(version, id_)
        if method == "tools/call" and isinstance(params.get("name"), str):
            schema = self._front_schema(request, params["name"])
            arguments = params.get("arguments")
            if schema is not None and isinstance(arguments, dict):
                rejection = validate_mcp_param_headers(schema, arguments, headers)
                if rejection is not None:
                    raise _Reject(400, rejection.code, rejection.message, id_, rejection.data)
        return version

    def _front_schema(self, request: Request, name: str) -> JSON | None:
        target: str | None = request.scope.get("path_params", {}).get("name")
        return self.front.tool_schema(target, name)

    def _stamp(self, target: str | None, method: str, result: JSON) -> JSON:
        """A result as the stateless era wants it: resultType, server info, cache hints."""
        out = dict(result)
        out.setdefault("resultType", "complete")
        meta = _obj(out.get("_meta"))
        out["_meta"] = {**meta, META_SERVER_INFO: self.front.server_info(target)}
        if method in CACHEABLE and out["resultType"] == "complete":
            out.setdefault("ttlMs", self.front.ttl_ms(target, method))
            out.setdefault("cacheScope", "private")
        return out

    def _listen(self, target: str | None, id_: Any, params: JSON) -> Response:
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise _Reject(
                400, INVALID_PARAMS, "subscriptions/listen needs params.notifications", id_
            )
        caps = self.front.capabilities(target)
        granted: JSON = {}
        for method, key in SUBSCRIPTION_KEYS.items():
            capability = method.split("/")[1]
            if wanted.get(key) and capability in caps:
                granted[key] = True
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list) and "resources" in caps:
            granted["resourceSubscriptions"] = [u for u in uris if isinstance(u, str)]
        listener = _Listener(target, id_, granted, EventStream(f"l{id_}", keep=256))
        listener.push("notifications/subscriptions/acknowledged", {"notifications": granted})
        self.listeners.add(listener)

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in _follow(listener.stream, 0, priming=False, ids=False):
                    yield chunk
                done = jsonrpc.result(
                    id_,
                    {
                        "resultType": "complete",
                        "_meta": {SUBSCRIPTION_ID: id_},
                    },
                )
                yield _sse(None, dumps(done, compact=True))
            finally:
                self.listeners.discard(listener)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- helpers -------------------------------------------------------------------------------

    def _key(
        self, target: str | None, session: str | None, client: str | None, params: JSON
    ) -> str | None:
        if target is None:
            return session or client
        arguments = params.get("arguments")
        return hash_key(
            self.front.router.pool(target),
            session=session,
            client=client,
            arguments=arguments if isinstance(arguments, dict) else {},
        )


class _Channel:
    """Where one request's notifications and reply go. Nothing exists until the request has
    something to send before its reply; then an event stream opens (the session's, so that
    it can be resumed) and the response becomes Server-Sent Events."""

    def __init__(self, id_: Any, session: ClientSession | None, *, sse: bool) -> None:
        self.id = id_
        self.session = session
        self.emit: Emit | None = self._emit if sse else None
        self.stream: EventStream | None = None
        self.outcome: tuple[int, JSON] | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

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


class _Listener:
    """A stateless client's `subscriptions/listen` stream and what it asked for."""

    def __init__(self, target: str | None, id_: Any, granted: JSON, stream: EventStream) -> None:
        self.target = target
        self.id = id_
        self.granted = granted
        self.stream = stream

    def push(self, method: str, params: JSON) -> None:
        """Send a notification on the stream, tagged with the subscription's id."""
        meta = {**_obj(params.get("_meta")), SUBSCRIPTION_ID: self.id}
        note = jsonrpc.notification(method, {**params, "_meta": meta})
        self.stream.push(dumps(note, compact=True))

    def wants(self, method: str, uri: str | None) -> bool:
        if uri is not None:
            return uri in (self.granted.get("resourceSubscriptions") or ())
        key = SUBSCRIPTION_KEYS.get(method)
        return bool(key and self.granted.get(key))


def _session_asker(session: ClientSession, emit: Emit) -> Ask:
    """Send a server's request to the session's client on the stream of the request it came
    with; the client POSTs its response, which `_client_response` hands back."""

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


def _client_response(session: ClientSession, msg: JSON) -> None:
    fut = session.asked.pop(str(msg.get("id")), None)
    if fut is None or fut.done():
        log.debug("MCP session %s…: response to nothing asked: %r", session.id[:8], msg.get("id"))
        return
    if isinstance(msg.get("result"), dict):
        fut.set_result(msg["result"])
    else:
        err = _obj(msg.get("error"))
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
    lost = _obj(_obj(body.get("error")).get("data")).get("type") == SessionInstanceLost.type
    return (404 if lost else 200), body


def _unregister(session: ClientSession, key: str, task: asyncio.Future[None]) -> None:
    if session.requests.get(key) is task:
        del session.requests[key]


def _obj(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _progress_token(msg: JSON) -> Any:
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def _follow(
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
            yield _sse(event_id if ids else None, data)
    finally:
        if next_event is not None:
            next_event.cancel()


async def _counted(session: ClientSession, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
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
