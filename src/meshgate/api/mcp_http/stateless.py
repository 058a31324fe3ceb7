"""The stateless era of MCP Streamable HTTP (protocol 2026-07-28).

One request per POST, with the protocol envelope in `params._meta`, checked against the
`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` headers. Results carry
`resultType`, the server's info and, for lists, cache hints. A call whose server asks the
client something is parked between rounds: the client gets `input_required` and retries with
its answers. `subscriptions/listen` streams the notifications a client asked for.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

from mcp.shared.inbound import decode_header_value, validate_mcp_param_headers
from starlette.requests import Request
from starlette.responses import Response

from meshgate.api.mcp_http.checks import (
    METHOD_HEADER,
    NAME_HEADER,
    VERSION_HEADER,
    Reject,
    balance_key,
    kind,
    obj,
    progress_token,
)
from meshgate.api.mcp_http.handshake import owner
from meshgate.api.mcp_http.streaming import Channel, event_stream, follow, respond, sse
from meshgate.api.responses import dumps
from meshgate.errors import MeshgateError
from meshgate.frontend.context import LOG_LEVELS, RequestContext, json_rpc_error
from meshgate.frontend.input_required import INPUT_METHODS, WRAPPED_PREFIX, Parked, ParkedCalls
from meshgate.frontend.server import McpFront
from meshgate.frontend.sessions import EventStream
from meshgate.observability.topology import CALLER_HEADER
from meshgate.security import principal_of
from meshgate.wire import jsonrpc
from meshgate.wire.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    REQUEST_CANCELLED,
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

MRTR_FIELDS = ("inputResponses", "requestState")
STATE_NOT_VALID = (
    "requestState is not valid: altered, expired, or issued by another gateway; "
    "send the request again without it"
)
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
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
SUBSCRIPTION_KEYS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}


def is_stateless(request: Request, msg: JSON) -> bool:
    """Whether a message without a session is one of the stateless era."""
    header = request.headers.get(VERSION_HEADER)
    if header is not None and header not in HANDSHAKE_VERSIONS:
        return True  # 2026-07-28, or a version we will refuse with a clear error
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and META_VERSION in meta


class StatelessEra:
    """Requests that carry their own envelope, their parked calls and their listen streams."""

    def __init__(self, front: McpFront) -> None:
        self.front = front
        self.listeners: set[Listener] = set()
        self.parked = ParkedCalls()
        # Who each parked call runs as: only that principal may answer its questions.
        self.owners: weakref.WeakKeyDictionary[Parked, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )

    async def post(
        self,
        request: Request,
        target: str | None,
        msg: JSON,
        wants_json: bool,
        wants_sse: bool,
    ) -> Response:
        msg_kind = kind(msg)
        if msg_kind == "notification":
            _check_version(request.headers.get(VERSION_HEADER) or "", None)
            return Response(status_code=202)
        if msg_kind != "request":
            raise Reject(
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
        channel = Channel(id_, None, sse=wants_sse)
        name_key = NAME_BEARING.get(method)
        name = params.get(name_key) if name_key else None
        state = params.get("requestState")
        upstream_state = isinstance(state, str) and state.startswith(WRAPPED_PREFIX)
        if "requestState" in params and not upstream_state:  # a retry with the client's answers
            try:
                parked = self.parked.claim(params["requestState"], method, name)
            except jsonrpc.JsonRpcError as e:
                raise Reject(400, e.code, e.message, id_) from None
            if self.owners.get(parked) != owner(request):
                # Another principal's call: as unknown to this caller as a made-up state.
                raise Reject(400, INVALID_PARAMS, STATE_NOT_VALID, id_)
            parked.answer(params.get("inputResponses"))
            parked.emit = channel.emit
            return await respond(
                request,
                channel,
                self._next_round(parked, id_, target, method, params),
                session=None,
            )
        if method in INPUT_METHODS and not upstream_state:  # answers without a round to answer
            params = {k: v for k, v in params.items() if k not in MRTR_FIELDS}
        meta = obj(params.get("_meta"))
        level = meta.get("io.modelcontextprotocol/logLevel")
        ctx = RequestContext(
            version=version,
            stateless=True,
            emit=channel.emit,
            progress_token=progress_token(msg),
            # Without a level in the envelope a stateless client gets no log messages.
            log_level=level if level in LOG_LEVELS else None,
            send_logs=level in LOG_LEVELS,
            key=balance_key(
                self.front, target, None, request.client.host if request.client else None, params
            ),
            client_capabilities=obj(meta.get(META_CAPABILITIES)),
            caller=request.headers.get(CALLER_HEADER)
            or obj(meta.get(META_CLIENT_INFO)).get("name"),
            headers=request.headers,
            principal=principal_of(request.scope),
        )
        if method in INPUT_METHODS:
            # The server may ask the client something mid-call: the call is parked, and each
            # question comes back to the client as an input_required result.
            parked = self.parked.park(method, name)
            self.owners[parked] = owner(request)
            parked.emit = channel.emit
            ctx.emit, ctx.ask, ctx.waiting = parked.relay, parked.ask, parked.is_waiting
            parked.task = asyncio.ensure_future(self.front.dispatch(target, method, params, ctx))
            return await respond(
                request,
                channel,
                self._next_round(parked, id_, target, method, params),
                session=None,
            )

        async def work() -> tuple[int, JSON]:
            try:
                result = await self.front.dispatch(target, method, params, ctx)
            except (MeshgateError, jsonrpc.JsonRpcError) as e:
                return _error(e, id_, method, params)
            return 200, jsonrpc.result(id_, self._stamp(target, method, result))

        return await respond(request, channel, work(), session=None)

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
            return _error(e, id_, method, params)
        except asyncio.CancelledError:
            return 200, jsonrpc.error(id_, REQUEST_CANCELLED, "request cancelled")
        return 200, jsonrpc.result(id_, self._stamp(target, method, value))

    def _check_envelope(self, request: Request, msg: JSON, params: JSON) -> str:
        id_, method = msg["id"], msg["method"]
        meta = params.get("_meta")
        if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
            raise Reject(
                400,
                INVALID_PARAMS,
                f"params._meta must carry {META_VERSION!r} and {META_CAPABILITIES!r}",
                id_,
            )
        version = meta[META_VERSION]
        headers = {k: v.strip(" \t") for k, v in request.headers.items()}  # RFC 9110 OWS
        if headers.get(VERSION_HEADER) != version:
            raise Reject(
                400,
                HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match params._meta's protocol version",
                id_,
            )
        if headers.get(METHOD_HEADER) != method:
            raise Reject(400, HEADER_MISMATCH, "Mcp-Method header does not match the method", id_)
        name_key = NAME_BEARING.get(method)
        if (
            name_key is not None
            and params.get(name_key) is not None
            and decode_header_value(headers.get(NAME_HEADER)) != params.get(name_key)
        ):
            raise Reject(
                400, HEADER_MISMATCH, f"Mcp-Name header does not match params.{name_key}", id_
            )
        if not isinstance(version, str):
            raise Reject(400, INVALID_PARAMS, "the protocol version must be a string", id_)
        _check_version(version, id_)
        if method == "tools/call" and isinstance(params.get("name"), str):
            target: str | None = request.scope.get("path_params", {}).get("name")
            schema = self.front.tool_schema(target, params["name"])
            arguments = params.get("arguments")
            if schema is not None and isinstance(arguments, dict):
                rejection = validate_mcp_param_headers(schema, arguments, headers)
                if rejection is not None:
                    raise Reject(400, rejection.code, rejection.message, id_, rejection.data)
        return version

    def _stamp(self, target: str | None, method: str, result: JSON) -> JSON:
        """A result as the stateless era wants it: resultType, server info, cache hints."""
        out = dict(result)
        out.setdefault("resultType", "complete")
        meta = obj(out.get("_meta"))
        out["_meta"] = {**meta, META_SERVER_INFO: self.front.server_info(target)}
        if method in CACHEABLE and out["resultType"] == "complete":
            out.setdefault("ttlMs", self.front.ttl_ms(target, method))
            out.setdefault("cacheScope", "private")
        return out

    def _listen(self, target: str | None, id_: Any, params: JSON) -> Response:
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise Reject(
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
        listener = Listener(target, id_, granted, EventStream(f"l{id_}", keep=256))
        listener.push("notifications/subscriptions/acknowledged", {"notifications": granted})
        self.listeners.add(listener)

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in follow(listener.stream, 0, priming=False, ids=False):
                    yield chunk
                done = jsonrpc.result(
                    id_,
                    {
                        "resultType": "complete",
                        "_meta": {SUBSCRIPTION_ID: id_},
                    },
                )
                yield sse(None, dumps(done, compact=True))
            finally:
                self.listeners.discard(listener)

        return event_stream(events())


class Listener:
    """A stateless client's `subscriptions/listen` stream and what it asked for."""

    def __init__(self, target: str | None, id_: Any, granted: JSON, stream: EventStream) -> None:
        self.target = target
        self.id = id_
        self.granted = granted
        self.stream = stream

    def push(self, method: str, params: JSON) -> None:
        """Send a notification on the stream, tagged with the subscription's id."""
        meta = {**obj(params.get("_meta")), SUBSCRIPTION_ID: self.id}
        note = jsonrpc.notification(method, {**params, "_meta": meta})
        self.stream.push(dumps(note, compact=True))

    def wants(self, method: str, uri: str | None) -> bool:
        if uri is not None:
            return uri in (self.granted.get("resourceSubscriptions") or ())
        key = SUBSCRIPTION_KEYS.get(method)
        return bool(key and self.granted.get(key))


def _error(
    e: MeshgateError | jsonrpc.JsonRpcError, id_: Any, method: str, params: JSON
) -> tuple[int, JSON]:
    code, message, data = json_rpc_error(e)
    if code == RESOURCE_NOT_FOUND and method == "resources/read":
        # A handshake-era server's "resource not found", as 2026-07-28 names it.
        code, data = INVALID_PARAMS, {**obj(data), "uri": params.get("uri")}
    return ERROR_STATUS.get(code, 200), jsonrpc.error(id_, code, message, data)


def _check_version(version: str, id_: Any) -> None:
    if version != STATELESS_VERSION:
        raise Reject(
            400,
            UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            id_,
            {"supported": [STATELESS_VERSION], "requested": version},
        )
