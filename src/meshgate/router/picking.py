"""What the router picks among and by: the protocols its pools and instances keep, the
consistent-hash key of a call, whether a tool or method is safe to send twice, what a call
asks of the policy, and a session's pinned instance."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from meshgate.balancer import Balancer
from meshgate.config import ServerPolicy
from meshgate.resilience import BackoffPolicy, CircuitBreaker, RetryBudget
from meshgate.router.call import Call
from meshgate.security.policy import Action
from meshgate.upstream.instance import Instance
from meshgate.upstream.supervisor import ServerPool
from meshgate.wire.jsonrpc import JSON

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def tool_label(pool: ServerPool, method: str, params: JSON) -> str:
    """The `tool` label of a call: a tool the server lists, `other` for a name it does not
    (labels stay bounded), or the MCP method for other requests."""
    if method != "tools/call":
        return method
    name = params.get("name")
    return name if isinstance(name, str) and name in pool.tools else "other"


def tool_is_retry_safe(pool: ServerPool, tool: str) -> bool:
    """A tool may be re-sent after a mid-call failure: declared or configured idempotent."""
    if tool in pool.policy.idempotent_tools:
        return True
    annotations = pool.tools.get(tool, {}).get("annotations") or {}
    return bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))


FILTERED_LISTS = frozenset({"tools/list"})


def action_of(call: Call) -> Action:
    """What a call asks to do, as the policy's rules see it."""
    if call.kind == "http":
        return Action.http(call.service, call.method or "GET", call.target)
    if call.method == "tools/call":
        return Action.tool(call.service, call.target)
    return Action.server(call.service)


class HasPolicy(Protocol):
    policy: ServerPolicy


def hash_key(
    pool: HasPolicy, *, session: str | None, client: str | None, arguments: JSON | None
) -> str | None:
    """The consistent-hash key of a call, by the pool's `hash_key` setting; None otherwise."""
    policy = pool.policy
    if policy.strategy not in ("consistent_hash", "ip_hash"):
        return None
    source = policy.hash_key
    if source == "session":
        return session
    if source.startswith("arg:"):
        value = (arguments or {}).get(source[4:])
        return None if value is None else json.dumps(value, sort_keys=True)
    return client


class Pickable(Protocol):
    """An instance the router can pick: an MCP Instance or an HTTP ServiceInstance."""

    id: str
    in_flight: int
    breaker: CircuitBreaker

    @property
    def weight(self) -> int: ...

    @property
    def latency_ewma(self) -> float: ...

    def observe_latency(self, seconds: float) -> None: ...


P = TypeVar("P", bound=Pickable)
R = TypeVar("R")


class Balanced(Protocol[P]):
    """A pool the router picks from: an MCP ServerPool or an HTTP ServicePool."""

    name: str
    policy: ServerPolicy
    balancer: Balancer
    budget: RetryBudget
    retry_backoff: BackoffPolicy
    rng: random.Random
    waiters: int

    def routable(self) -> list[P]: ...

    def restarting(self) -> bool: ...

    def retry_after(self) -> float: ...

    def restart_wait_s(self) -> float: ...

    def notify(self) -> None: ...

    async def wait_changed(self, timeout: float) -> None: ...


class Pin:
    """The instance a client session is held to: in `sticky` mode the one its first call
    picked, in `dedicated` mode the process claimed for it (released when the session ends)."""

    def __init__(self) -> None:
        self.instance: Instance | None = None
        self.release: Callable[[Instance], Awaitable[None]] | None = None
        self.lock = asyncio.Lock()
