"""Policy changed at run time (`POST /configure/load-balancer`, `/configure/circuit-breaker`):
applied to every pool the router picks among, and to those made later, and kept in the
registry's override store so that a restart, or another node of a shared registry, keeps it.

A run-time value stands over the configured one for every MCP server and HTTP service until it
is changed again (the configuration files are not rewritten).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator
from typing import Any

from meshgate.balancer import STRATEGIES, make_balancer
from meshgate.config import ServerPolicy
from meshgate.registry.overrides import OverrideStore
from meshgate.resilience import CircuitBreaker
from meshgate.router.core import Router

log = logging.getLogger("meshgate.router.overrides")

# The values this module applies, and the breaker setting each one is.
STRATEGY = "strategy"
BREAKER_FIELDS = {"failure_threshold": "failure_threshold", "recovery_timeout": "recovery_s"}


class RuntimePolicy:
    """The run-time policy of this node: loaded at start, followed while running."""

    def __init__(self, router: Router, store: OverrideStore) -> None:
        self.router = router
        self.store = store
        self.values: dict[str, Any] = {}
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Apply what was stored (a restart keeps it), then follow other nodes' changes."""
        self._changed(await self.store.load())
        self._task = asyncio.create_task(self.store.watch(self._changed), name="runtime policy")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.store.close()

    async def set(self, **values: Any) -> None:
        """Store these values first (a change that cannot be kept is not made), then apply."""
        await self.store.save(values)
        self._changed({**self.values, **values})

    def _changed(self, values: dict[str, Any]) -> None:
        known = {k: v for k, v in values.items() if _valid(k, v)}
        if known == self.values:
            return
        self.values = known
        log.info("run-time policy: %s", known or "none")
        self.apply()

    def policy(self, policy: ServerPolicy) -> ServerPolicy:
        """A configured policy with the run-time values over it."""
        update: dict[str, Any] = {}
        if STRATEGY in self.values:
            update["strategy"] = self.values[STRATEGY]
        values = self.values
        breaker = {field: values[name] for name, field in BREAKER_FIELDS.items() if name in values}
        if breaker:
            update["breaker"] = policy.breaker.model_copy(update=breaker)
        return policy.model_copy(update=update) if update else policy

    def apply(self) -> None:
        """Every pool, its balancer and its instances' breakers; and the policies pools made
        later start from (HTTP services registered later, servers only peers run)."""
        router = self.router
        for pool, breakers in self._pools():
            if pool is router.cluster:
                new = router.cluster.remote_policy = self.policy(router.cluster.remote_policy)
            else:
                new = self.policy(pool.policy)
                if new.strategy != pool.policy.strategy:
                    pool.balancer = make_balancer(new.strategy, rng=self._rng)
                pool.policy = new
            for breaker in breakers:
                breaker.policy = dataclasses.replace(
                    breaker.policy,
                    failure_threshold=new.breaker.failure_threshold,
                    recovery_s=new.breaker.recovery_s,
                )
        services = router.services
        if services is not None:
            services.policy = self.policy(services.policy)
            services.policies = {k: self.policy(v) for k, v in services.policies.items()}

    def _pools(self) -> Iterator[tuple[Any, list[CircuitBreaker]]]:
        """(pool, the breakers of its instances) for every pool this node routes to."""
        for pool in self.router.pools().values():
            yield pool, [s.instance.breaker for s in pool.slots if s.instance is not None]
        cluster = self.router.cluster
        if cluster is not None:  # one breaker per peer node, whatever server it serves
            yield cluster, [peer.breaker for peer in cluster.peers.values()]
        services = self.router.services
        if services is not None:
            for service_pool in services.pools.values():
                yield service_pool, [i.breaker for i in service_pool.instances.values()]


def _valid(name: str, value: Any) -> bool:
    """Whether a stored value is one this version applies (another may have written it)."""
    if name == STRATEGY:
        return value in STRATEGIES
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name == "failure_threshold":
        return isinstance(value, int) and 1 <= value <= 100
    return name == "recovery_timeout" and 1 <= value <= 3600
