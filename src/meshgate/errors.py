"""The meshgate exception hierarchy.

Every error a client can see is a ``MeshgateError`` carrying its HTTP status, a stable
``type`` slug (the RFC 9457 problem type) and, where JSON-RPC needs one, an error code.
The API layer maps them to ``application/problem+json`` in one place. The JSON-RPC error codes
themselves are defined here, once (the table below).
"""

from __future__ import annotations

from typing import Any

# Every JSON-RPC error code meshgate sends or acts on, each number named once. They live here,
# at the bottom layer, so that the errors below can carry them; `meshgate.wire.jsonrpc`
# re-exports them for everything that speaks JSON-RPC.

# JSON-RPC 2.0
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# MCP
RESOURCE_NOT_FOUND = -32002  # handshake era: resources/read of an unknown URI
HEADER_MISMATCH = -32020  # 2026-07-28: an Mcp-* header disagrees with the body
MISSING_CAPABILITY = -32021  # 2026-07-28: the request needs a capability not declared
UNSUPPORTED_PROTOCOL_VERSION = -32022  # 2026-07-28
REQUEST_CANCELLED = -32800  # as in LSP: the reply to a request cancelled before its answer

# meshgate's own, in the implementation-defined server error range (-32000 to -32099)
UNAVAILABLE = -32001
REQUEST_TIMEOUT = UNAVAILABLE  # the MCP SDKs' name for -32001: not answered in time
CIRCUIT_OPEN = -32003
OVERLOADED = -32004
SHUTTING_DOWN = -32005
NO_HEALTHY_INSTANCE = -32006  # not -32002, which is RESOURCE_NOT_FOUND to handshake-era clients
QUEUE_UNAVAILABLE = -32007
UPSTREAM_ERROR = -32010
UPSTREAM_CRASHED = -32011
UPSTREAM_TIMEOUT = -32012
LOOP_DETECTED = -32013
FORBIDDEN = -32014  # the caller's roles do not allow this server, tool or method
RATE_LIMITED = -32015  # the caller's or the target's rate limit is spent; retry after


class MeshgateError(Exception):
    """Base of every error meshgate reports to a caller."""

    status: int = 500
    type: str = "internal-error"
    title: str = "Internal error"
    jsonrpc_code: int = INTERNAL_ERROR

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra: dict[str, Any] = dict(extra or {})
        # Response headers the error needs (WWW-Authenticate on a 401, RateLimit on a 429).
        self.headers: dict[str, str] = dict(headers or {})

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body for this error."""
        body: dict[str, Any] = {
            "type": f"https://meshgate.dev/problems/{self.type}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


class ConfigError(MeshgateError):
    """A configuration file or setting is invalid."""

    status = 400
    type = "invalid-config"
    title = "Invalid configuration"


class InvalidInput(MeshgateError):
    """The request is malformed (bad JSON, wrong shape)."""

    status = 400
    type = "invalid-input"
    title = "Invalid input"
    jsonrpc_code = INVALID_REQUEST


class InvalidArguments(MeshgateError):
    """The request is well formed but its arguments are rejected."""

    status = 422
    type = "invalid-arguments"
    title = "Invalid arguments"
    jsonrpc_code = INVALID_PARAMS


class RegistrationRefused(InvalidArguments):
    """A registration's URL is one the policy does not allow."""

    type = "registration-refused"
    title = "Registration refused"


class Unresolved(RegistrationRefused):
    """A registration's host name did not resolve (in time): nothing could be checked."""


class PayloadTooLarge(MeshgateError):
    """The request body exceeds the configured limit."""

    status = 413
    type = "payload-too-large"
    title = "Payload too large"
    jsonrpc_code = INVALID_REQUEST


class RequestTimeout(MeshgateError):
    """A request's head or body did not arrive in time: the connection is closed."""

    status = 408
    type = "request-timeout"
    title = "Request timeout"


class HeadersTooLarge(MeshgateError):
    """A request's head (request line and headers) is larger than the listener accepts."""

    status = 431
    type = "headers-too-large"
    title = "Request header fields too large"


class Unauthenticated(MeshgateError):
    """The call names no identity where one is required."""

    status = 401
    type = "unauthenticated"
    title = "Unauthenticated"
    jsonrpc_code = INVALID_REQUEST


class Forbidden(MeshgateError):
    """The caller is known, and its roles do not allow this."""

    status = 403
    type = "forbidden"
    title = "Forbidden"
    jsonrpc_code = FORBIDDEN


class RateLimited(MeshgateError):
    """A rate limit is spent; `retry_after` says when a call would be taken again."""

    status = 429
    type = "rate-limited"
    title = "Too many requests"
    jsonrpc_code = RATE_LIMITED


class TooManyRequests(RateLimited):
    """A bound on held resources (sessions, queued tasks) is reached for this caller or queue."""

    type = "too-many"
    title = "Too many"


class OriginNotAllowed(MeshgateError):
    """A state-changing request came from a web page on a site not allowed to drive the mesh."""

    status = 403
    type = "origin-not-allowed"
    title = "Origin not allowed"
    jsonrpc_code = INVALID_REQUEST


class UnsupportedMediaType(MeshgateError):
    """A request body is not of the media type the route reads."""

    status = 415
    type = "unsupported-media-type"
    title = "Unsupported media type"
    jsonrpc_code = INVALID_REQUEST


class HostNotAllowed(MeshgateError):
    """The Host a request names is not one this gateway answers for (DNS rebinding)."""

    status = 421
    type = "host-not-allowed"
    title = "Host not allowed"
    jsonrpc_code = INVALID_REQUEST


class NotFound(MeshgateError):
    """An unknown service, tool, instance or task."""

    status = 404
    type = "not-found"
    title = "Not found"
    jsonrpc_code = METHOD_NOT_FOUND


class UnknownService(NotFound):
    type = "unknown-service"
    title = "Unknown service"


class UnknownTool(NotFound):
    type = "unknown-tool"
    title = "Unknown tool"
    jsonrpc_code = INVALID_PARAMS


class Conflict(MeshgateError):
    """The request clashes with what exists (an API key name already in use)."""

    status = 409
    type = "conflict"
    title = "Conflict"
    jsonrpc_code = INVALID_PARAMS


class Unavailable(MeshgateError):
    """No instance can take the call right now; the caller may retry later."""

    status = 503
    type = "unavailable"
    title = "Service unavailable"
    jsonrpc_code = UNAVAILABLE
    reason = "unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = 1.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after, extra=extra)
        self.extra.setdefault("reason", self.reason)


class NoHealthyInstance(Unavailable):
    type = "no-healthy-instance"
    title = "No healthy instance"
    jsonrpc_code = NO_HEALTHY_INSTANCE
    reason = "no_healthy_instance"


class CircuitOpen(Unavailable):
    type = "circuit-open"
    title = "Circuit breaker open"
    jsonrpc_code = CIRCUIT_OPEN
    reason = "circuit_open"


class Overloaded(Unavailable):
    """Every instance is at its in-flight limit and the wait queue is full or timed out."""

    type = "overloaded"
    title = "Overloaded"
    jsonrpc_code = OVERLOADED
    reason = "overloaded"


class TooManyConnections(Unavailable):
    """The listener holds as many connections as it may: this one is answered and closed."""

    type = "too-many-connections"
    title = "Too many connections"
    reason = "too_many_connections"


class ShuttingDown(Unavailable):
    type = "shutting-down"
    title = "Shutting down"
    jsonrpc_code = SHUTTING_DOWN
    reason = "shutting_down"


class QueueUnavailable(Unavailable):
    """The task queue's backend (Redis) cannot be reached: nothing was stored, or (the link
    broke during the write) the outcome is unknown; an enqueue retried with its idempotency
    key is safe either way."""

    type = "queue-unavailable"
    title = "Task queue unavailable"
    jsonrpc_code = QUEUE_UNAVAILABLE
    reason = "queue_unavailable"


class UpstreamError(MeshgateError):
    """The upstream answered, but with an error or something that is not MCP."""

    status = 502
    type = "upstream-error"
    title = "Upstream error"
    jsonrpc_code = UPSTREAM_ERROR


class UpstreamCrashed(UpstreamError):
    """The instance died while the call was in flight and the call was not safe to retry."""

    type = "upstream-crashed"
    title = "Upstream crashed mid-call"
    jsonrpc_code = UPSTREAM_CRASHED


class UpstreamTimeout(MeshgateError):
    """The upstream did not answer within the deadline."""

    status = 504
    type = "upstream-timeout"
    title = "Upstream timed out"
    jsonrpc_code = UPSTREAM_TIMEOUT


class LoopDetected(MeshgateError):
    """A call came back around: it has passed through more gateways than `max_hops`."""

    status = 508
    type = "loop-detected"
    title = "Loop detected"
    jsonrpc_code = LOOP_DETECTED


class SessionInstanceLost(MeshgateError):
    """The instance a sticky session was pinned to is gone; the session cannot go on."""

    status = 404
    type = "session-instance-lost"
    title = "Session instance lost"
    jsonrpc_code = INVALID_REQUEST


class Undecryptable(MeshgateError):
    """Stored data is encrypted with a key that is not among the configured encryption keys
    (it was removed before the data was re-encrypted)."""

    status = 500
    type = "undecryptable"
    title = "Stored data cannot be decrypted"
