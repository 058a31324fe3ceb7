"""One client request as the MCP front end sees it, and what answering it needs: the
request's context (era, streams, capabilities, identity), the answers to a server's questions
(`Asker`), the params sent upstream, and the mapping of errors to JSON-RPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshgate.errors import InvalidArguments, MeshgateError, UnknownService, UnknownTool
from meshgate.router import Pin
from meshgate.router.call import HOPS_HEADER, TIMEOUT_HEADER, Call, parse_hops, parse_timeout
from meshgate.security import NOBODY, Principal
from meshgate.wire.jsonrpc import (
    INVALID_PARAMS,
    JSON,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    JsonRpcError,
)
from meshgate.wire.protocol import META_CAPABILITIES

_META_PREFIX = "io.modelcontextprotocol/"

Emit = Callable[[JSON], None]  # sends one JSON-RPC notification to the client
Ask = Callable[[str, JSON], Awaitable[JSON]]  # sends one request to the client, for its result

# What a server may ask its client, and the client capability each needs.
CLIENT_REQUESTS = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"


LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass
class RequestContext:
    """What the transport knows about one client request."""

    version: str
    stateless: bool
    emit: Emit | None = None  # None when the client cannot receive notifications for it
    progress_token: Any = None
    log_level: str | None = None  # the least severe log message to relay; None: every one
    send_logs: bool = True
    ask: Ask | None = None  # None when the client cannot be asked anything for this request
    client_capabilities: JSON = field(default_factory=dict)
    waiting: Callable[[], bool] | None = None  # true while parked for the client's answers
    pins: dict[str, Pin] | None = None  # a session's sticky instances, by server
    session_ask: Ask | None = None  # asks the session's client on its standing stream
    session_emit: Emit | None = None  # notifies it there
    caller: str | None = None  # who calls, for the topology
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's HTTP headers
    timeout_s: float | None = None
    key: str | None = None  # consistent-hash key (session id or client address)
    session: str | None = None  # the handshake-era session's id
    entry: str = "mcp"  # where the request came in: "mcp" (HTTP transports) or "task"
    principal: Principal = NOBODY  # who the client was authenticated as

    def call(
        self, server: str, target: str, arguments: Any = None, *, method: str = "tools/call"
    ) -> Call:
        """The router's view of one request of this client to `server`: a tool call (`target`
        the tool), or another MCP `method` (`target` the same method)."""
        hops = 0
        timeout_s = self.timeout_s
        if self.principal.via == "node" or HOPS_HEADER in self.headers:
            # A peer node's forwarded request: its hop count and what is left of its deadline.
            hops = parse_hops(self.headers.get(HOPS_HEADER), max_hops=1_000_000)
            raw = self.headers.get(TIMEOUT_HEADER)
            if timeout_s is None and raw is not None:
                timeout_s = parse_timeout(raw, name=TIMEOUT_HEADER, minimum=0.001)
        return Call(
            service=server,
            kind="mcp",
            target=target,
            entry=self.entry,
            incoming=self.headers,
            caller=self.caller,
            arguments=arguments,
            timeout_s=timeout_s,
            hops=hops,
            method=method,
            principal=self.principal,
        )


class Asker:
    """Answers what a server asks while it works on one request: `ping` here, the rest by
    the client, if it declared the capability and can be reached."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx

    @property
    def waiting(self) -> bool:
        """Parked until the client answers: the server is not working on it right now."""
        return self.ctx.waiting is not None and self.ctx.waiting()

    async def __call__(self, method: str, params: JSON) -> JSON:
        ctx = self.ctx
        if method == "ping":
            return {}
        capability = CLIENT_REQUESTS.get(method)
        if capability is None:
            raise JsonRpcError(METHOD_NOT_FOUND, f"meshgate does not forward {method}")
        if capability not in ctx.client_capabilities:
            if method == "roots/list":
                return {"roots": []}
            raise JsonRpcError(
                MISSING_CAPABILITY,
                f"the client did not declare the {capability!r} capability",
                {"requiredCapabilities": {capability: {}}},
            )
        if ctx.ask is None:
            raise JsonRpcError(
                METHOD_NOT_FOUND,
                f"the client cannot be sent {method} for this request (it accepts no event stream)",
            )
        return await ctx.ask(method, params)


def str_param(params: JSON, name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise JsonRpcError(INVALID_PARAMS, f"'{name}' must be a non-empty string")
    return value


def upstream_params(params: JSON, ctx: RequestContext, **overrides: Any) -> JSON:
    """The client's params for an upstream request: its protocol `_meta` keys replaced by the
    gateway's (the connection adds version and client info), but with the client's own
    capabilities, so that a stateless server asks only what the client can answer; its
    progress token replaced by the connection's."""
    out = {**params, **overrides}
    meta = params.get("_meta")
    kept = {
        k: v
        for k, v in (meta.items() if isinstance(meta, dict) else ())
        if k != "progressToken" and not k.startswith(_META_PREFIX)
    }
    kept[META_CAPABILITIES] = bridgeable(ctx)
    if ctx.emit is not None and ctx.send_logs:  # a stateless server logs only when asked
        kept[META_LOG_LEVEL] = ctx.log_level or "debug"
    out["_meta"] = kept
    return out


def bridgeable(ctx: RequestContext) -> JSON:
    """The client capabilities a server may rely on through the gateway for this request."""
    return {k: v for k, v in ctx.client_capabilities.items() if k in CLIENT_REQUESTS.values()}


def json_rpc_error(err: BaseException) -> tuple[int, str, Any]:
    """(code, message, data) for an error raised while answering a request."""
    if isinstance(err, JsonRpcError):
        return err.code, err.message, err.data
    if isinstance(err, MeshgateError) and "upstream_code" in err.extra:
        # The server answered with an error: the client sees it as the server sent it.
        return (
            err.extra["upstream_code"],
            err.extra["upstream_message"],
            err.extra.get("upstream_data"),
        )
    if isinstance(err, UnknownTool | InvalidArguments):
        data = dict(err.extra) or None
        return INVALID_PARAMS, err.detail, data
    if isinstance(err, UnknownService):
        return METHOD_NOT_FOUND, err.detail, None
    if isinstance(err, MeshgateError):
        data = {"type": err.type, "status": err.status, **err.extra}
        if err.retry_after is not None:
            data["retry_after_s"] = err.retry_after
        return err.jsonrpc_code, err.detail, data
    raise err
