"""Dedicated mode: a pool lends a warm spare to one client session at a time, and ends the
process when the session is over; the spare's slot starts the next one."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from meshgate.config import ServerPolicy
from meshgate.errors import NoHealthyInstance, Overloaded
from meshgate.registry.base import Registry
from meshgate.upstream.instance import Instance
from meshgate.upstream.slot import Slot

log = logging.getLogger("meshgate.supervisor")


class Dedicated:
    """The dedicated-mode part of a ServerPool (its state is the pool's)."""

    name: str
    policy: ServerPolicy
    registry: Registry
    slots: list[Slot]
    dedicated: dict[str, Instance]
    _dedicated_ids: itertools.count[int]
    _instance_tasks: set[asyncio.Task[None]]
    waiters: int

    # The pool's own, used here.
    notify: Callable[[], None]
    restarting: Callable[[], bool]
    wait_changed: Callable[[float], Awaitable[None]]
    _end: Callable[[Instance, str], Awaitable[None]]

    async def claim(self, timeout_s: float) -> Instance:
        """Take a warm spare out of its slot for one client session; the slot starts another.

        Raises Overloaded at `max_dedicated` sessions, NoHealthyInstance when no spare is
        ready within `timeout_s`.
        """
        if len(self.dedicated) >= self.policy.max_dedicated:
            raise Overloaded(
                f"{self.name} already runs {len(self.dedicated)} dedicated processes "
                "(max_dedicated)",
                retry_after=5.0,
            )
        end = time.monotonic() + timeout_s
        queued = False
        try:
            while True:
                for slot in self.slots:
                    inst = slot.instance
                    if inst is not None and inst.routable and inst.in_flight == 0:
                        return self._detach(slot, inst)
                remaining = end - time.monotonic()
                if not self.restarting() or remaining <= 0:
                    raise NoHealthyInstance(
                        f"{self.name} has no warm spare ready for a new session"
                    )
                if not queued:  # a session waiting for a spare is load, as a queued call is
                    self.waiters += 1
                    queued = True
                await self.wait_changed(remaining)
        finally:
            if queued:
                self.waiters -= 1

    def _detach(self, slot: Slot, inst: Instance) -> Instance:
        self.registry.deregister(inst.id)
        inst.id = f"{self.name}-d{next(self._dedicated_ids)}"
        self.dedicated[inst.id] = inst
        self.registry.register(inst.record())
        slot.hand_over()
        inst.detached.set()  # its slot's watcher lets go of it and starts the next spare
        task = asyncio.create_task(self._watch_dedicated(inst), name=f"dedicated {inst.id}")
        self._instance_tasks.add(task)
        task.add_done_callback(self._instance_tasks.discard)
        log.info("%s (pid %s) now serves one client session", inst.id, inst.pid)
        self.notify()
        return inst

    async def _watch_dedicated(self, inst: Instance) -> None:
        ended = (inst.conn.closed, inst.conn.exited)
        try:
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
            log.info("%s exited (code %s)", inst.id, inst.conn.exit_code)
        finally:
            if any(f.done() for f in ended):
                await self._end(inst, f"exited with code {inst.conn.exit_code}")
            self.dedicated.pop(inst.id, None)
            self.notify()

    async def release(self, inst: Instance) -> None:
        """The session is over: end its process."""
        if self.dedicated.get(inst.id) is inst:
            log.info("%s released by its session", inst.id)
            await self._end(inst, "released by its session")
