"""One call as the router sees it: who asks, through which entry, for what, by when.

Every entry builds a `Call` (REST tool calls, `/mcp`, `/sse`, the HTTP proxy, task enqueue and
execution) and hands it to the router, which runs the interceptor chain on it once (identity,
policy, limits), then routes it. The deadline and the hop count travel with the call to the
next hop, so a chain of gateways shares one deadline and a loop ends with 508.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshgate.errors import InvalidArguments, LoopDetected
from meshgate.observability.topology import CALLER_HEADER
from meshgate.resilience import Deadline
from meshgate.security import NOBODY, Principal

__all__ = [
    "CALLER_HEADER",
    "HOPS_HEADER",
    "SESSION_HEADER",
    "TIMEOUT_HEADER",
    "Call",
    "parse_hops",
    "parse_timeout",
]

TIMEOUT_HEADER = "x-meshgate-timeout"  # seconds left for the call; the next hop gets the rest
HOPS_HEADER = "x-meshgate-hops"  # gateways this call has passed through
SESSION_HEADER = "x-meshgate-session"  # a client's session, for hash_key = "session"


@dataclass
class Call:
    """One call through the gateway, as the interceptors and the router loop see it."""

    service: str
    kind: str  # "mcp" (a server's method) or "http" (a proxied request)
    target: str  # the tool (tools/call), the MCP method, or the HTTP path
    entry: str  # "rest", "mcp", "proxy", "task" or "internal": where it came in
    incoming: Mapping[str, str] = field(default_factory=dict)  # lower-case request headers
    caller: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # to add on the outgoing request
    meta: dict[str, Any] = field(default_factory=dict)  # to add to MCP params._meta
    body_size: int = 0  # the request body (HTTP)
    arguments: Any = None  # a tool call's arguments (MCP), measured as JSON only if needed
    timeout_s: float | None = None  # the caller's own deadline; the service's otherwise
    hops: int = 0  # gateways passed before this one
    client: str | None = None  # the client's address, as far as the gateway can trust it
    admitted: bool = False  # the interceptor chain has run
    method: str = "tools/call"  # mcp: the MCP method (target is the tool for tools/call); http
    principal: Principal = NOBODY  # who the request was authenticated as; NOBODY may do nothing

    def size(self) -> int:
        if self.arguments is not None:
            return len(json.dumps(self.arguments))
        return self.body_size

    def deadline(self, service_timeout_s: float) -> Deadline:
        """The call's deadline: the caller's if it set one, else the service's timeout."""
        return Deadline.after(self.timeout_s if self.timeout_s is not None else service_timeout_s)

    @property
    def client_set_deadline(self) -> bool:
        """Whether a client chose this deadline (not a task's own, not an earlier gateway's
        remainder): only those are held to the minimum."""
        return self.timeout_s is not None and self.hops == 0 and self.entry != "task"

    def caller_is_hurried(self, service_timeout_s: float) -> bool:
        """Whether the caller's own deadline is shorter than the service's timeout: then a
        timeout is the caller's impatience, not the instance's fault."""
        return self.timeout_s is not None and self.timeout_s < service_timeout_s

    @classmethod
    def internal(cls, service: str, kind: str, target: str) -> Call:
        """A call the gateway makes on its own behalf (catalog listings and the like)."""
        return cls(service=service, kind=kind, target=target, entry="internal", method=target)


def parse_timeout(value: object, *, name: str, minimum: float, maximum: float = 3600.0) -> float:
    """A caller's deadline in seconds, checked: a number in [minimum, maximum]."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not minimum <= value <= maximum
    ):
        raise InvalidArguments(
            f"{name} must be a number of seconds from {minimum:g} to {maximum:g}",
            extra={"minimum": minimum, "maximum": maximum},
        )
    return float(value)


def parse_hops(value: str | None, *, max_hops: int) -> int:
    """The hop count a request arrived with; a loop (too many hops) ends here with 508."""
    if value is None:
        return 0
    try:
        hops = int(value)
    except ValueError:
        raise InvalidArguments(f"{HOPS_HEADER} must be a whole number") from None
    if hops < 0:
        raise InvalidArguments(f"{HOPS_HEADER} must not be negative")
    if hops >= max_hops:
        raise LoopDetected(
            f"this call has already passed through {hops} gateways (max_hops = {max_hops}); "
            "a service is probably registered at a gateway URL that leads back here",
            extra={"hops": hops, "max_hops": max_hops},
        )
    return hops
