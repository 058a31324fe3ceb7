"""A slot: one position in a pool of MCP server processes, and what the API shows of it.

Its process comes and goes (a crash, a restart, a hand-over to a client session); its id, its
health (`meshgate.health.Health`, the state of the current process), its crash-loop count and
its last error stay with the slot.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from meshgate.config import ServerPolicy
from meshgate.health import CrashLoop, Health, HealthLog, Thresholds
from meshgate.registry.base import InstanceState
from meshgate.resilience import BackoffPolicy
from meshgate.upstream.instance import Instance
from meshgate.wire.connection import ConnectionLost
from meshgate.wire.jsonrpc import JsonRpcError

STDERR_KEPT = 20  # lines of a failed process's stderr the API shows


class Slot:
    """One position in a pool; its process comes and goes, its id stays."""

    def __init__(
        self, server: str, index: int, policy: ServerPolicy, log: HealthLog, rng: random.Random
    ) -> None:
        self.server = server
        self.index = index
        self.id = f"{server}-{index}"
        h, restart = policy.health, policy.restart
        self._thresholds = Thresholds(h.healthy_after, h.unhealthy_after)
        self._log = log
        self.instance: Instance | None = None
        self.health = self._new_health()
        self.crashes = CrashLoop(
            max_failures=restart.max_failures,
            stable_after_s=restart.stable_after_s,
            backoff=BackoffPolicy(restart.backoff_base_s, restart.backoff_cap_s),
            rng=rng,
        )
        self.restarts = 0
        self.last_error: str | None = None
        self.last_stderr: list[str] = []
        self.settled = asyncio.Event()  # set once the first start succeeded or gave up

    def _new_health(self) -> Health:
        return Health(self.id, self.server, self._thresholds, self._log)

    def hand_over(self) -> None:
        """The current process left the slot (to serve one client session): start afresh."""
        self.instance = None
        self.health = self._new_health()

    def ended(self, inst: Instance, ran_s: float) -> None:
        """Keep why the slot's process ended, for the API."""
        self.last_error = f"exited with code {inst.conn.exit_code} after {ran_s:.1f}s"
        self.last_stderr = list(inst.conn.stderr)[-STDERR_KEPT:]

    @property
    def state(self) -> InstanceState:
        return self.health.state

    @property
    def failures(self) -> int:
        """Failed starts and early exits in a row."""
        return self.crashes.failures

    def view(self, node: str) -> dict[str, Any]:
        """The slot as `/api/v1/mcp/servers` lists it."""
        if self.instance is not None and self.state is not InstanceState.FAILED:
            view = self.instance.view()
            if view["state"] != InstanceState.STOPPED.value:
                view["state"] = self.state.value
        else:
            view = {
                "id": self.id,
                "state": self.state.value,
                "pid": None,
                "node": node,
                "breaker": "closed",
                "in_flight": 0,
                "restarts": self.restarts,
                "dedicated": False,  # a session's own process is never a slot's
            }
        if self.last_error:
            view["last_error"] = self.last_error
        if self.state is InstanceState.FAILED:
            view["last_stderr"] = self.last_stderr
        return view


def describe_start_failure(e: BaseException, timeout: float) -> str:
    """Why a process did not become ready, as `last_error` says it."""
    if isinstance(e, TimeoutError):
        return f"no answer to discovery/handshake or tools/list within {timeout}s"
    if isinstance(e, ConnectionLost):
        return f"exited during startup ({e})"
    if isinstance(e, JsonRpcError):
        return f"startup request failed: {e}"
    return str(e)
