"""An instance: one verified process of an MCP server, as the router and the API see it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from meshgate.balancer import LatencyTracked
from meshgate.config import ServerPolicy
from meshgate.registry.base import InstanceRecord, InstanceState
from meshgate.resilience import BreakerPolicy, BreakerState, CircuitBreaker
from meshgate.upstream.process import is_running
from meshgate.wire.connection import McpConnection
from meshgate.wire.protocol import Era, ServerIdentity


def breaker_policy(policy: ServerPolicy) -> BreakerPolicy:
    b = policy.breaker
    return BreakerPolicy(
        failure_threshold=b.failure_threshold,
        failure_rate=b.failure_rate,
        window_s=b.window_s,
        minimum_calls=b.minimum_calls,
        recovery_s=b.recovery_s,
        half_open_successes=b.half_open_successes,
        half_open_max_calls=b.half_open_max_calls,
    )


class Instance(LatencyTracked):
    """One process incarnation. A restart makes a new Instance in the same slot and id."""

    def __init__(
        self,
        server: str,
        slot: int,
        node: str,
        conn: McpConnection,
        breaker: CircuitBreaker,
        restarts: int,
    ) -> None:
        super().__init__()
        self.id = f"{server}-{slot}"
        self.server = server
        self.slot = slot
        self.node = node
        self.conn = conn
        self.breaker = breaker
        self.restarts = restarts
        self.state = InstanceState.STARTING
        self.identity: ServerIdentity | None = None
        self.in_flight = 0
        self.weight = 1
        self.started_at = time.monotonic()
        self.detached = asyncio.Event()  # taken out of its slot for one client session
        self.last_health: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.conn.pid

    @property
    def era(self) -> Era | None:
        return self.identity.era if self.identity else None

    @property
    def routable(self) -> bool:
        return self.state is InstanceState.HEALTHY and self.conn.alive

    def record(self) -> InstanceRecord:
        return InstanceRecord(
            id=self.id,
            service=self.server,
            kind="mcp",
            node=self.node,
            state=self.state,
            pid=self.pid,
            metadata={"era": self.era.value if self.era else None},
        )

    def view(self) -> dict[str, Any]:
        """The instance as `/api/v1/mcp/servers` shows it."""
        breaker = self.breaker.state
        state = self.state
        # The exit may be seen a moment after the process died; a view is never behind it.
        pid = self.pid
        if state is not InstanceState.STOPPED and (
            not self.conn.alive or (pid is not None and not is_running(pid))
        ):
            state = InstanceState.STOPPED
        return {
            "id": self.id,
            "state": state.value,
            "pid": self.pid,
            "node": self.node,
            "breaker": breaker.value if isinstance(breaker, BreakerState) else str(breaker),
            "in_flight": self.in_flight,
            "restarts": self.restarts,
            "era": self.era.value if self.era else None,
            "protocol_version": self.identity.protocol_version if self.identity else None,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "latency_ewma_ms": round(self.latency_ewma * 1000, 3),
            "garbage_lines": self.conn.garbage_lines,
            "last_health": self.last_health,
            "dedicated": self.detached.is_set(),
        }
