"""The meshgate exception hierarchy.

Every error a client can see is a ``MeshgateError`` carrying its HTTP status, a stable
``type`` slug (the RFC 9457 problem type) and, where JSON-RPC needs one, an error code.
The API layer maps them to ``application/problem+json`` in one place.
"""

from __future__ import annotations

from typing import Any


class MeshgateError(Exception):
    """Base of every error meshgate reports to a caller."""

    status: int = 500
    type: str = "internal-error"
    title: str = "Internal error"
    jsonrpc_code: int = -32603

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra: dict[str, Any] = dict(extra or {})

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
    jsonrpc_code = -32600


class InvalidArguments(MeshgateError):
    """The request is well formed but its arguments are rejected."""

    status = 422
    type = "invalid-arguments"
    title = "Invalid arguments"
    jsonrpc_code = -32602


class PayloadTooLarge(MeshgateError):
    """The request body exceeds the configured limit."""

    status = 413
    type = "payload-too-large"
    title = "Payload too large"
    jsonrpc_code = -32600


class Unauthenticated(MeshgateError):
    """The call names no identity where one is required."""

    status = 401
    type = "unauthenticated"
    title = "Unauthenticated"
    jsonrpc_code = -32600


class NotFound(MeshgateError):
    """An unknown service, tool, instance or task."""

    status = 404
    type = "not-found"
    title = "Not found"
    jsonrpc_code = -32601


class UnknownService(NotFound):
    type = "unknown-service"
    title = "Unknown service"


class UnknownTool(NotFound):
    type = "unknown-tool"
    title = "Unknown tool"
    jsonrpc_code = -32602


class Unavailable(MeshgateError):
    """No instance can take the call right now; the caller may retry later."""

    status = 503
    type = "unavailable"
    title = "Service unavailable"
    jsonrpc_code = -32001
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
    jsonrpc_code = -32006  # not -32002: handshake-era MCP uses it for "resource not found"
    reason = "no_healthy_instance"


class CircuitOpen(Unavailable):
    type = "circuit-open"
    title = "Circuit breaker open"
    jsonrpc_code = -32003
    reason = "circuit_open"


class Overloaded(Unavailable):
    """Every instance is at its in-flight limit and the wait queue is full or timed out."""

    type = "overloaded"
    title = "Overloaded"
    jsonrpc_code = -32004
    reason = "overloaded"


class ShuttingDown(Unavailable):
    type = "shutting-down"
    title = "Shutting down"
    jsonrpc_code = -32005
    reason = "shutting_down"


class QueueUnavailable(Unavailable):
    """The task queue's backend (Redis) cannot be reached; nothing was stored."""

    type = "queue-unavailable"
    title = "Task queue unavailable"
    jsonrpc_code = -32007
    reason = "queue_unavailable"


class UpstreamError(MeshgateError):
    """The upstream answered, but with an error or something that is not MCP."""

    status = 502
    type = "upstream-error"
    title = "Upstream error"
    jsonrpc_code = -32010


class UpstreamCrashed(UpstreamError):
    """The instance died while the call was in flight and the call was not safe to retry."""

    type = "upstream-crashed"
    title = "Upstream crashed mid-call"
    jsonrpc_code = -32011


class UpstreamTimeout(MeshgateError):
    """The upstream did not answer within the deadline."""

    status = 504
    type = "upstream-timeout"
    title = "Upstream timed out"
    jsonrpc_code = -32012


class LoopDetected(MeshgateError):
    """A call came back around: it has passed through more gateways than `max_hops`."""

    status = 508
    type = "loop-detected"
    title = "Loop detected"
    jsonrpc_code = -32013


class SessionInstanceLost(MeshgateError):
    """The instance a sticky session was pinned to is gone; the session cannot go on."""

    status = 404
    type = "session-instance-lost"
    title = "Session instance lost"
    jsonrpc_code = -32600
