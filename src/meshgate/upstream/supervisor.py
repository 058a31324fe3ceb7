"""The supervisor: pools of stdio MCP server instances, started, verified, watched, restarted.

Each pool runs from `instances.min` to `instances.max` slots, as its autoscaler
(`upstream.autoscaler`) decides; a slot retired by a scale-down stops taking calls, lets its
calls in flight finish, then stops its process. A slot runs one process at a time: spawn,
discover or handshake, `tools/list`, and only then register it as healthy. Health probes run
on an interval (`meshgate.health` decides the states); an exit deregisters the instance at once
and the slot starts the next process: at once after a first failure, with exponential backoff and
full jitter after each further one in a row. A slot that keeps failing before it becomes stable
ends `failed`, with its last stderr lines kept for the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from meshgate.balancer import Balancer, make_balancer
from meshgate.config import ServerSpec
from meshgate.health import CheckResult, HealthLog, run_checks
from meshgate.observability.metrics import metrics
from meshgate.registry.base import InstanceState, Registry
from meshgate.resilience import BackoffPolicy, CircuitBreaker, RetryBudget, Signal
from meshgate.upstream import process
from meshgate.upstream.autoscaler import Autoscaler
from meshgate.upstream.catalog import Catalog, Subscriber
from meshgate.upstream.dedicated import Dedicated
from meshgate.upstream.http import HttpUpstream
from meshgate.upstream.instance import Instance, breaker_policy
from meshgate.upstream.scaling import Scaling
from meshgate.upstream.slot import STDERR_KEPT, Slot, describe_start_failure
from meshgate.upstream.stdio import StdioConnection
from meshgate.wire import protocol
from meshgate.wire.connection import ConnectionLost, McpConnection
from meshgate.wire.jsonrpc import JSON, JsonRpcError

log = logging.getLogger("meshgate.supervisor")

STOP_GRACE_S = 5.0


class ServerPool(Scaling, Dedicated, Catalog):
    """All instances of one MCP server, plus what the router needs to pick among them.

    How it grows and shrinks (`Scaling`), how it lends processes to client sessions
    (`Dedicated`) and what it hears from its servers (`Catalog`) live in their own modules."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        node: str,
        registry: Registry,
        reaper: process.Reaper | None,
        rng: random.Random | None = None,
        health_log: HealthLog | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.tls = tls  # for a remote (https) server
        self.name = spec.name
        self.policy = spec.policy
        self.node = node
        self.registry = registry
        self.reaper = reaper
        self.rng = rng or random.Random()
        self.balancer: Balancer = make_balancer(self.policy.strategy, rng=self.rng)
        r = self.policy.retry
        self.retry_backoff = BackoffPolicy(r.backoff_base_s, r.backoff_cap_s)
        self.budget = RetryBudget(r.budget_ratio, r.budget_min_per_s)
        self.health_log = health_log or HealthLog(log)
        self.clock = clock
        self.autoscaler = Autoscaler(self.name, self.policy, clock=clock)
        self.slots: list[Slot] = []  # the running ones, by index; not those being retired
        self._slots: dict[int, Slot] = {}  # by index, those being retired too
        self._slot_tasks: dict[int, asyncio.Task[None]] = {}
        self._cold_start = False  # a call woke a pool at zero and waits for its instance
        self.tools: dict[str, JSON] = {}
        self.tools_version = 0
        self._waiters = 0
        self._queued_since: float | None = None
        self.era_hint: protocol.Era | None = None
        self.identity: protocol.ServerIdentity | None = None  # of the newest verified instance
        self.subscribers: set[Subscriber] = set()
        self.dedicated: dict[str, Instance] = {}  # held by one client session each
        # Other nodes' healthy instances of this server, as one node of a cluster sees them.
        self.peers: Callable[[], list[Instance]] | None = None
        self._dedicated_ids = itertools.count(1)
        self._instance_tasks: set[asyncio.Task[None]] = set()  # and other per-instance tasks
        self._changed = Signal()
        self._tasks: list[asyncio.Task[None]] = []  # the autoscaler's loop
        self._refresh: asyncio.Task[None] | None = None
        self._catalog_stale = False
        self._stopping = False

    # -- what the router reads ----------------------------------------------------------------

    def routable(self) -> list[Instance]:
        """The healthy local instances; when there is none, those of peer nodes that have one
        (local instances are always preferred)."""
        local = self.local_routable()
        if local or self.peers is None:
            return local
        return self.peers()

    def local_routable(self) -> list[Instance]:
        return [s.instance for s in self.slots if s.instance is not None and s.instance.routable]

    def instance(self, instance_id: str) -> Instance | None:
        """A live instance by id: a slot's or a dedicated one."""
        for slot in self.slots:
            if slot.instance is not None and slot.instance.id == instance_id:
                return slot.instance
        if instance_id in self.dedicated:
            return self.dedicated[instance_id]
        peers = self.peers() if self.peers is not None else []
        return next((i for i in peers if i.id == instance_id), None)

    @property
    def waiters(self) -> int:
        """Calls waiting for an instance (the router's queue); since when, for the autoscaler."""
        return self._waiters

    @waiters.setter
    def waiters(self, n: int) -> None:
        if n <= 0:
            self._queued_since = None
        elif self._queued_since is None:
            self._queued_since = self.clock()
        self._waiters = n

    def recoverable(self) -> bool:
        """Whether an instance may yet become healthy (some slot is not failed, or the pool
        is scaled to zero and starts one when asked)."""
        if self._stopping:
            return False
        return not self.slots or any(s.state is not InstanceState.FAILED for s in self.slots)

    def restarting(self) -> bool:
        """Whether an instance is (re)starting, or waiting out its restart backoff, and may
        soon take calls. A pool scaled to zero starts one now: a caller is waiting for it."""
        if not self.slots and not self._stopping:
            self._apply(self.autoscaler.demand())
        return self.recoverable()

    def restart_wait_s(self) -> float:
        """How long a call may wait for an instance to (re)start: `restart_wait_s`, or for a
        cold start from zero, as long as a start may take."""
        wait = self.policy.restart_wait_s
        return max(wait, self.policy.startup_timeout_s) if self._cold_start else wait

    def retry_after(self) -> float:
        """When a caller refused for want of a healthy instance may try again."""
        return max(1.0, self.policy.restart.backoff_base_s)

    def notify(self) -> None:
        """Wake every waiter: an instance changed state or freed an in-flight slot."""
        self._changed.notify()

    async def wait_changed(self, timeout: float) -> None:
        await self._changed.wait(timeout)

    @property
    def state(self) -> InstanceState:
        states = {s.state for s in self.slots}
        for candidate in (InstanceState.HEALTHY, InstanceState.STARTING, InstanceState.UNHEALTHY):
            if candidate in states:
                return candidate
        return InstanceState.FAILED if InstanceState.FAILED in states else InstanceState.STOPPED

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "mcp",
            "mode": self.policy.mode,
            "strategy": self.policy.strategy,
            "state": self.state.value,
            "scaling": self.autoscaler.view(),
            "instances": [
                *(self._slots[i].view(self.node) for i in sorted(self._slots)),
                *(i.view() for i in self.dedicated.values()),
            ],
            "tools": sorted(self.tools),
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.autoscaler.desired):
            self._add_slot()
        metrics.desired(self.name, self.autoscaler.desired)
        if self.autoscaler.scales:
            self._tasks = [asyncio.create_task(self._autoscale(), name=f"autoscale {self.name}")]

    async def wait_settled(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(s.settled.wait() for s in self.slots))

    async def stop(self) -> None:
        self._stopping = True
        tasks = [
            *self._tasks,
            *self._slot_tasks.values(),
            *([self._refresh] if self._refresh else []),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        slots = list(self._slots.values())
        running = [s.instance for s in slots if s.instance is not None]
        await asyncio.gather(
            *(self._end(i, "the gateway stops") for i in [*running, *self.dedicated.values()]),
            return_exceptions=True,
        )
        await asyncio.gather(*self._instance_tasks, return_exceptions=True)
        for s in slots:
            s.health.move(InstanceState.STOPPED, "the gateway stops")
        self.notify()

    async def _end(self, inst: Instance, why: str) -> None:
        """Make sure the process group is gone, gently if it is still running."""
        pid = inst.pid
        inst.conn.close_stdin()
        if pid is not None:
            await process.terminate_group(pid, inst.conn.exited, STOP_GRACE_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_S):
                    await asyncio.shield(inst.conn.exited)
            if self.reaper is not None:
                self.reaper.unwatch(pid)
        self._set_state(inst, InstanceState.STOPPED, why)

    def _set_state(self, inst: Instance, state: InstanceState, why: str) -> None:
        """Move an instance (and its slot, while it holds it) and tell the registry."""
        slot = self._slots.get(inst.slot)
        if slot is not None and slot.instance is inst:
            slot.health.move(state, why)
        if inst.state is state:
            return
        if state is InstanceState.HEALTHY:
            self._cold_start = False
        previous, inst.state = inst.state, state
        if state is InstanceState.STOPPED:
            self.registry.deregister(inst.id)
        elif previous is InstanceState.STARTING or self.registry.get(inst.id) is None:
            self.registry.register(inst.record())
        else:
            self.registry.update(inst.record())
        self.notify()

    async def _run_slot(self, slot: Slot) -> None:
        while not self._stopping:
            slot.health.move(InstanceState.STARTING, f"restart {slot.restarts}")
            inst = await self._start_instance(slot)
            slot.settled.set()
            ran: float | None = None
            if inst is not None:
                await self._watch(inst)
                if inst.detached.is_set():
                    continue  # handed to a client session: start the next spare at once
                if self._stopping:
                    return
                ran = time.monotonic() - inst.started_at
            delay = slot.crashes.ended(ran)
            if delay is None:
                slot.health.move(
                    InstanceState.FAILED,
                    f"{slot.failures} failures in a row; giving up: {slot.last_error}",
                )
                self.notify()
                return
            slot.restarts += 1
            metrics.restart(self.name)
            log.warning(
                "%s: restarting %s (failures in a row: %d of %d)",
                slot.id,
                f"in {delay:.3f}s" if delay else "at once",
                slot.failures,
                slot.crashes.max_failures,
            )
            if delay:
                await asyncio.sleep(delay)

    async def _start_instance(self, slot: Slot) -> Instance | None:
        """Spawn and verify one process; None (with slot.last_error set) when that fails."""
        spec, policy = self.spec, self.policy
        label = slot.id

        def make_conn() -> StdioConnection:
            return StdioConnection(
                label=label,
                max_line_bytes=policy.max_line_bytes,
                stderr_lines=policy.stderr_lines,
                on_notification=self._on_notification,
                on_request=self._on_server_request,
            )

        conn: McpConnection
        if spec.url is not None:
            conn = HttpUpstream(
                spec.url,
                label=label,
                headers=spec.headers,
                stderr_lines=policy.stderr_lines,
                max_bytes=policy.max_line_bytes,
                on_notification=self._on_notification,
                on_request=self._on_server_request,
                tls=self.tls,
            )
            conn.tool_schema = lambda name: self.tools.get(name, {}).get("inputSchema")
        else:
            try:
                _, proto = await process.spawn(
                    spec.command,
                    spec.args,
                    spec.env,
                    spec.cwd,
                    make_conn,
                    inherit_env=policy.inherit_env,
                    env_passthrough=policy.env_passthrough,
                )
            except OSError as e:
                slot.last_error = f"cannot start {spec.command!r}: {e.strerror or e}"
                log.error("%s: %s", label, slot.last_error)
                return None
            assert isinstance(proto, StdioConnection)
            conn = proto
        inst = Instance(
            self.name,
            slot.index,
            self.node,
            conn,
            CircuitBreaker(
                breaker_policy(policy),
                on_transition=metrics.breaker_hook(self.name, f"{self.name}-{slot.index}"),
            ),
            slot.restarts,
        )
        slot.instance = inst
        if self.reaper is not None and conn.pid is not None:
            self.reaper.watch(conn.pid)
        try:
            async with asyncio.timeout(policy.startup_timeout_s):
                inst.identity = await protocol.establish(
                    conn, timeout=policy.startup_timeout_s, era_hint=self.era_hint
                )
                tools = await protocol.list_tools(conn, timeout=policy.startup_timeout_s)
        except (TimeoutError, ConnectionLost, JsonRpcError, OSError) as e:
            if isinstance(e, ConnectionLost) and inst.identity is None and self.era_hint is None:
                # Some handshake-era servers exit on a request before `initialize`.
                self.era_hint = protocol.Era.HANDSHAKE
            slot.last_error = describe_start_failure(e, policy.startup_timeout_s)
            await self._end(inst, "did not start")
            slot.last_stderr = list(conn.stderr)[-STDERR_KEPT:]
            log.error("%s did not start: %s", label, slot.last_error)
            return None
        if self.era_hint is None:
            self.era_hint = inst.identity.era
        self.identity = inst.identity
        if inst.identity.era is protocol.Era.STATELESS:
            self._listen(inst)
        self._set_catalog(tools)
        slot.last_error = None
        ident = inst.identity
        self._set_state(
            inst,
            InstanceState.HEALTHY,
            f"verified: pid {conn.pid}, {ident.era.value} era ({ident.protocol_version}), "
            f"{len(tools)} tools",
        )
        return inst

    async def _watch(self, inst: Instance) -> None:
        """Probe health until the process exits or stops talking; then deregister and reap it.

        The exit of the process is enough: a grandchild that still holds its stdout (`npx`
        and its `node`) goes with the group in `_end`, rather than when the pipe drains.
        """
        h = self.policy.health
        slot_health = self._slots[inst.slot].health
        health = asyncio.create_task(
            run_checks(
                slot_health,
                lambda: self._probe(inst),
                interval_s=h.interval_s,
                rng=self.rng,
                first_at_once=False,  # it was verified a moment ago
                on_result=lambda result, new: self._checked(inst, result, new),
            ),
            name=f"health {inst.id}",
        )
        detached = asyncio.ensure_future(inst.detached.wait())
        ended = (inst.conn.closed, inst.conn.exited)
        try:
            waits: set[asyncio.Future[Any]] = {*ended, detached}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            health.cancel()
            detached.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            if any(f.done() for f in ended) and not inst.detached.is_set():
                # Stdout may close a moment before the exit status is known.
                code = inst.conn.exit_code
                why = "exited" if code is None else f"exited with code {code}"
                self._set_state(inst, InstanceState.STOPPED, why)
                # Grandchildren, or a process that only closed its stdout, go with the group.
                await self._end(inst, why)
                slot = self._slots.get(inst.slot)
                if slot is not None and slot.instance is inst:
                    slot.ended(inst, time.monotonic() - inst.started_at)

    async def _probe(self, inst: Instance) -> str | None:
        h = self.policy.health
        assert inst.era is not None
        try:
            await protocol.probe(inst.conn, inst.era, timeout=h.timeout_s)
        except TimeoutError:
            return f"no answer within {h.timeout_s}s"
        except (ConnectionLost, JsonRpcError) as e:
            return str(e)
        return None

    def _checked(self, inst: Instance, result: CheckResult, new: InstanceState | None) -> None:
        inst.last_health = result.view()
        if new is not None:
            self._set_state(inst, new, "health checks")


class Supervisor:
    """Every pool of the gateway; owns the reaper that guards against a gateway crash."""

    def __init__(
        self,
        specs: Iterable[ServerSpec],
        *,
        node: str,
        registry: Registry,
        health_log: HealthLog | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reaper = process.Reaper()
        self.health_log = health_log or HealthLog(log)
        self.pools = {
            s.name: ServerPool(
                s,
                node=node,
                registry=registry,
                reaper=self.reaper,
                health_log=self.health_log,
                tls=tls,
                clock=clock,
            )
            for s in specs
        }

    async def start(self, *, wait: bool = True) -> None:
        self.reaper.start()
        for pool in self.pools.values():
            pool.start()
        if wait:
            timeout = max((p.policy.startup_timeout_s for p in self.pools.values()), default=0)
            await asyncio.gather(*(p.wait_settled(timeout + 1) for p in self.pools.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pools.values()))
        self.reaper.stop()
