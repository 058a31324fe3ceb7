"""How a pool grows and shrinks: the load its autoscaler samples, and the slots it adds or
retires (a retired slot's instance drains: no new calls, those in flight finish)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from meshgate.config import ServerPolicy
from meshgate.health import HealthLog
from meshgate.observability.metrics import metrics
from meshgate.registry.base import InstanceState
from meshgate.upstream.autoscaler import DOWN, Autoscaler, Decision, Load
from meshgate.upstream.slot import Slot

if TYPE_CHECKING:
    from meshgate.upstream.instance import Instance

log = logging.getLogger("meshgate.supervisor")


class Scaling:
    """The scaling part of a ServerPool (its state is the pool's)."""

    name: str
    policy: ServerPolicy
    clock: Callable[[], float]
    autoscaler: Autoscaler
    health_log: HealthLog
    rng: random.Random
    slots: list[Slot]
    _slots: dict[int, Slot]
    _slot_tasks: dict[int, asyncio.Task[None]]
    _instance_tasks: set[asyncio.Task[None]]
    _waiters: int
    _queued_since: float | None
    _cold_start: bool
    _stopping: bool

    # The pool's own, used here.
    notify: Callable[[], None]
    wait_changed: Callable[[float], Awaitable[None]]
    _set_state: Callable[[Instance, InstanceState, str], None]
    _end: Callable[[Instance, str], Awaitable[None]]
    _run_slot: Callable[[Slot], Coroutine[Any, Any, None]]

    def load(self) -> Load:
        """The pool's load as the autoscaler samples it."""
        live = [s.instance for s in self.slots if s.instance is not None]
        ready = [i for i in live if i.routable]
        busy = [i.latency_ewma for i in ready if i.in_flight and i.latency_ewma]
        since = self._queued_since
        return Load(
            instances=len(self.slots),
            ready=len(ready),
            in_flight=sum(i.in_flight for i in live),
            queued=self._waiters,
            queued_for_s=self.clock() - since if since is not None else 0.0,
            latency_s=sum(busy) / len(busy) if busy else None,
        )

    async def _autoscale(self) -> None:
        # Not before the first instances started (or gave up): a pool that may scale to zero
        # needs its catalog first, and a slow start is not an idle pool.
        await asyncio.gather(*(s.settled.wait() for s in self.slots))
        interval = self.policy.autoscale.interval_s
        while not self._stopping:
            await asyncio.sleep(interval)
            self.scale()

    def scale(self) -> Decision | None:
        """Sample the load once and carry out what the autoscaler decides."""
        decision = self.autoscaler.decide(self.load())
        self._apply(decision)
        return decision

    def _apply(self, decision: Decision | None) -> None:
        if decision is None or self._stopping:
            return
        log.info("%s", decision.line())
        metrics.autoscaled(self.name, decision.direction, decision.reason, decision.after)
        if decision.reason == "demand":
            self._cold_start = True
        if decision.direction != DOWN:
            while len(self.slots) < decision.after:
                self._add_slot()
            return
        # Retire those that would take longest to be of use, then those with fewest calls.
        order = {InstanceState.HEALTHY: 2, InstanceState.UNHEALTHY: 1}
        victims = sorted(
            self.slots,
            key=lambda s: (
                order.get(s.state, 0),
                s.instance.in_flight if s.instance is not None else 0,
                -s.index,
            ),
        )[: len(self.slots) - decision.after]
        for slot in victims:
            # Routing stops at once; the process stops once its calls are done.
            self.slots.remove(slot)
            inst = slot.instance
            if inst is not None and inst.state in (InstanceState.HEALTHY, InstanceState.UNHEALTHY):
                self._set_state(inst, InstanceState.DRAINING, f"scaled down: {decision.why}")
            task = asyncio.create_task(self._retire(slot), name=f"retire {slot.id}")
            self._instance_tasks.add(task)
            task.add_done_callback(self._instance_tasks.discard)
        self.notify()

    def _add_slot(self) -> None:
        index = next(i for i in itertools.count(1) if i not in self._slots)
        slot = Slot(self.name, index, self.policy, self.health_log, self.rng)
        self._slots[index] = slot
        self.slots = sorted([*self.slots, slot], key=lambda s: s.index)
        self._slot_tasks[index] = asyncio.create_task(self._run_slot(slot), name=f"slot {slot.id}")

    async def _retire(self, slot: Slot) -> None:
        """Let the calls in flight on a retired slot's instance finish (each within its
        deadline), then stop its process."""
        task = self._slot_tasks.pop(slot.index)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        inst = slot.instance
        try:
            if inst is None or inst.state is InstanceState.STOPPED:
                return
            # Each call holds its instance no longer than its own deadline (which a caller may
            # set beyond call_timeout_s), so the drain waits for every one of them.
            while inst.in_flight > 0 and inst.conn.alive:
                await self.wait_changed(self.policy.health.interval_s)
            await self._end(inst, "scaled down")
        finally:
            if self._slots.get(slot.index) is slot:
                del self._slots[slot.index]
            self.notify()
