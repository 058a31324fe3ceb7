"""HTTP services of the mesh: registrations, executed health checks, TTLs.

An HTTP service instance (an agent, a backend) registers itself with `POST /register`. The
registration is stored durably first (`registry.store`), then the instance starts `starting`
and only its checks move it: `healthy_after` passing checks make it `healthy`,
`unhealthy_after` failing ones `unhealthy`, and back. A check is real: an HTTP GET of its health
path that must answer 2xx in time, a TCP connect, or an MCP request (`server/discover` or
`ping`, after discovery or the handshake). An instance registered with a TTL must
send `PUT .../heartbeat` within it, or it is removed. A `ttl` check runs nothing: the instance
reports its own health (a heartbeat, or a Consul TTL update: passing, warning, critical), and
one that reports nothing within the check's interval turns unhealthy. Every transition is
logged and counted (`meshgate.health`, as for MCP server processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from meshgate.balancer import Balancer, LatencyTracked, make_balancer
from meshgate.config import Registration, ServerPolicy
from meshgate.crypto import mask
from meshgate.errors import RegistrationRefused, Unresolved
from meshgate.health import CheckResult, Health, HealthLog, Thresholds, run_checks
from meshgate.observability.metrics import metrics
from meshgate.registry.base import InstanceRecord, InstanceState, Registry
from meshgate.registry.store import RegistrationStore
from meshgate.resilience import BackoffPolicy, CircuitBreaker, RetryBudget, Signal
from meshgate.services.deadlines import Deadlines
from meshgate.services.http import ServiceBroken, ServiceClient, Unreachable
from meshgate.services.policy import RegistrationPolicy, check_address
from meshgate.upstream.http import HttpUpstream
from meshgate.upstream.instance import breaker_policy
from meshgate.urls import redact_url
from meshgate.wire import protocol
from meshgate.wire.connection import ConnectionLost
from meshgate.wire.jsonrpc import JsonRpcError

log = logging.getLogger("meshgate.services")


class ServiceInstance(LatencyTracked):
    """One registered endpoint and what its checks found; the router picks among these."""

    def __init__(
        self,
        reg: Registration,
        heartbeat_at: float,
        policy: ServerPolicy,
        *,
        static: bool,
        health_log: HealthLog,
    ) -> None:
        super().__init__()
        self.reg = reg
        self.static = static
        self.id = reg.instance_id
        self.service = reg.name
        self.weight = reg.weight
        self.breaker = CircuitBreaker(
            breaker_policy(policy), on_transition=metrics.breaker_hook(reg.name, self.id)
        )
        self.in_flight = 0
        check = reg.check
        self.health = Health(
            self.id,
            self.service,
            Thresholds(check.healthy_after, check.unhealthy_after),
            health_log,
        )
        self.heartbeat_at = heartbeat_at
        # A ttl check's: what the instance last reported of itself (passing, warning or
        # critical) and when; the status a Consul client reads back.
        self.reported: str | None = None
        self.reported_note = ""
        self.reported_at = heartbeat_at
        self.registered_at = time.time()
        self.task: asyncio.Task[None] | None = None
        self.mcp: HttpUpstream | None = None  # the MCP check's connection
        self.mcp_era: protocol.Era | None = None

    @property
    def state(self) -> InstanceState:
        return self.health.state

    @property
    def last_check(self) -> dict[str, Any] | None:
        return self.health.last_view()

    @property
    def routable(self) -> bool:
        return self.state is InstanceState.HEALTHY

    def view(self) -> dict[str, Any]:
        reg = self.reg
        breaker = self.breaker.state
        return {
            "id": self.id,
            "name": self.service,
            "kind": "http",
            "url": redact_url(reg.base_url),
            "state": self.state.value,
            "tags": reg.tags,
            "metadata": mask(reg.metadata),
            "weight": reg.weight,
            "check": reg.check.model_dump(),
            "static": self.static,
            "ttl_s": reg.ttl_s,
            "depends_on": reg.depends_on,
            "last_check": self.last_check,
            "heartbeat_age_s": round(time.time() - self.heartbeat_at, 3),
            "breaker": getattr(breaker, "value", str(breaker)),
            "in_flight": self.in_flight,
        }


class ServicePool:
    """The instances of one HTTP service, as the router sees them (like an MCP ServerPool)."""

    def __init__(self, name: str, policy: ServerPolicy, rng: random.Random) -> None:
        self.name = name
        self.policy = policy
        self.rng = rng
        self.balancer: Balancer = make_balancer(policy.strategy, rng=rng)
        r = policy.retry
        self.retry_backoff = BackoffPolicy(r.backoff_base_s, r.backoff_cap_s)
        self.budget = RetryBudget(r.budget_ratio, r.budget_min_per_s)
        self.instances: dict[str, ServiceInstance] = {}
        self.waiters = 0
        self._changed = Signal()

    def routable(self) -> list[ServiceInstance]:
        return [i for i in self.instances.values() if i.routable]

    def restarting(self) -> bool:
        """HTTP services are not restarted by the gateway: nothing to wait for."""
        return False

    def restart_wait_s(self) -> float:
        """Never waited on: `restarting` is always False."""
        return self.policy.restart_wait_s

    def retry_after(self) -> float:
        """When a caller refused for want of a healthy instance may try again: the next
        health check."""
        return min((i.reg.check.interval_s for i in self.instances.values()), default=1.0)

    def notify(self) -> None:
        """Wake every waiter: an instance changed state or freed an in-flight slot."""
        self._changed.notify()

    async def wait_changed(self, timeout: float) -> None:
        await self._changed.wait(timeout)


class ServiceMesh:
    """Every registered HTTP service instance of this node, checked and persisted; and, with a
    shared registry, the instances other nodes registered (`services.remote`), pooled too."""

    def __init__(
        self,
        store: RegistrationStore,
        registry: Registry,
        *,
        node: str,
        policy: ServerPolicy | None = None,
        policies: Mapping[str, ServerPolicy] | None = None,
        clock: Callable[[], float] = time.time,
        registration: RegistrationPolicy | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.tls = tls  # https services and their MCP checks
        self.registration = registration or RegistrationPolicy()
        self.clock = clock  # wall-clock seconds of heartbeats, as the store keeps them
        self.registry = registry
        self.node = node
        self.policy = policy or ServerPolicy()  # [defaults]
        self.policies = dict(policies or {})  # [services.NAME]
        self.instances: dict[str, ServiceInstance] = {}  # this node's, by id
        self._deadlines: Deadlines[str] = Deadlines()  # when each TTL runs out, by id
        self.remote: dict[str, ServiceInstance] = {}  # other nodes', by "<node>/<id>"
        self.pools: dict[str, ServicePool] = {}
        self.static: set[str] = set()  # ids of [[mesh.services]]: config-owned, not stored
        self.health_log = HealthLog(log)
        # For checks and for calls through the router (`/call`): pooled keep-alive connections.
        self.client = ServiceClient(max_connections=1000, tls=tls)
        self._ttl_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    @property
    def transitions(self) -> Counter[tuple[str, str]]:
        """State transitions of HTTP instances, as (from, to) state values."""
        return self.health_log.transitions

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, static: list[Registration] | None = None) -> None:
        for reg in static or []:
            if not await self._admitted(reg, "static service"):
                continue
            self.static.add(reg.instance_id)
            self._add(reg, self.clock())
        for id_, body, heartbeat_at in self.store.all():
            if id_ in self.static:
                continue
            try:
                reg = Registration.model_validate(body)
            except ValueError as e:
                log.warning("stored registration %s is no longer valid; dropped: %s", id_, e)
                self.store.delete(id_)
                continue
            if not await self._admitted(reg, "stored registration"):
                self.store.delete(id_)
                continue
            self._add(reg, heartbeat_at)
        if self.instances:
            log.info("%d HTTP service instances reloaded from the store", len(self.instances))
        self._ttl_task = asyncio.create_task(self._expire_loop(), name="service TTLs")
        self.registry.subscribe(self._followed)
        for record in self.registry.instances():
            self._followed(record, None)

    async def stop(self) -> None:
        for inst in self.instances.values():
            if inst.mcp is not None:
                inst.mcp.close_stdin()
        tasks = [i.task for i in self.instances.values() if i.task is not None]
        if self._ttl_task is not None:
            tasks.append(self._ttl_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    async def _admitted(self, reg: Registration, what: str) -> bool:
        """Whether a registration read at start passes the registration policy (a name that
        does not resolve now is kept: its DNS may come up later, and it reaches nothing)."""
        try:
            await self.check(reg)
        except Unresolved as e:
            log.warning("%s %s: %s; kept", what, reg.instance_id, e.detail)
        except RegistrationRefused as e:
            log.warning(
                "%s %s refused by the registration policy; dropped: %s",
                what,
                reg.instance_id,
                e.detail,
            )
            return False
        return True

    # -- the API's operations ------------------------------------------------------------------

    async def check(self, reg: Registration, *, own_port: int | None = None) -> None:
        """Refuse (RegistrationRefused, 422) a registration whose address the policy does
        not allow; `own_port`: the port the registering request came in on."""
        if reg.address is not None:
            check_address(reg.address)
        await self.registration.check(reg.base_url, own_port=own_port)

    def register(self, reg: Registration) -> tuple[ServiceInstance, bool]:
        """Store and start checking a registration; (instance, created). The same registration
        again changes nothing; a changed one replaces the old and starts over."""
        id_ = reg.instance_id
        current = self.instances.get(id_)
        if current is not None and current.reg == reg:
            return current, False
        self.store.put(id_, reg.name, reg.model_dump(mode="json"))
        if current is not None:
            self._remove(current, reason="registered again with changes")
        return self._add(reg, self.clock()), current is None

    def deregister(self, service: str, id_: str) -> bool:
        inst = self.instances.get(id_)
        if inst is None or inst.service != service:
            return False
        self.store.delete(id_)
        self._remove(inst, reason="deregistered")
        return True

    def heartbeat(self, service: str, id_: str) -> ServiceInstance | None:
        inst = self.instances.get(id_)
        if inst is None or inst.service != service:
            return None
        inst.heartbeat_at = self.clock()
        self.store.heartbeat(id_)
        if inst.reg.check.type == "ttl":
            self._report(inst, "passing", None)  # (which schedules its next deadline)
        else:
            self._schedule(inst)
        return inst

    def report(
        self, service: str, id_: str, status: Literal["passing", "warning", "critical"], why: str
    ) -> ServiceInstance | None:
        """A ttl check's result, as the instance tells it: passing and warning keep it
        healthy and renew its TTL as a heartbeat does; critical makes it unhealthy. None: no
        such instance with a ttl check."""
        inst = self.instances.get(id_)
        if inst is None or inst.service != service or inst.reg.check.type != "ttl":
            return None
        if status != "critical":
            inst.heartbeat_at = self.clock()
            self.store.heartbeat(id_)
        self._report(inst, status, why or None)
        return inst

    def _report(self, inst: ServiceInstance, status: str, why: str | None) -> None:
        inst.reported = status
        inst.reported_note = why or ""
        inst.reported_at = self.clock()
        self._schedule(inst)
        error = None if status != "critical" else (why or "reported critical")
        if inst.health.observe(error, 0.0) is not None:
            self._moved(inst)
            return
        # A report is the instance's own word: it moves it at once, whatever the thresholds.
        target = InstanceState.HEALTHY if error is None else InstanceState.UNHEALTHY
        if inst.state in (InstanceState.STARTING, InstanceState.HEALTHY, InstanceState.UNHEALTHY):
            self._transition(inst, target, f"reported {status}" + (f": {why}" if why else ""))

    # -- internals -----------------------------------------------------------------------------

    def _add(self, reg: Registration, heartbeat_at: float) -> ServiceInstance:
        policy = self.policies.get(reg.name, self.policy)
        inst = ServiceInstance(
            reg,
            heartbeat_at,
            policy,
            static=reg.instance_id in self.static,
            health_log=self.health_log,
        )
        self.instances[inst.id] = inst
        pool = self.pools.get(reg.name)
        if pool is None:
            pool = self.pools[reg.name] = ServicePool(reg.name, policy, self._rng)
        pool.instances[inst.id] = inst
        self._schedule(inst)
        self.registry.register(self._record(inst))
        if reg.check.type != "ttl":  # a ttl check is reported, not run
            inst.task = asyncio.create_task(self._check_loop(inst), name=f"check {inst.id}")
        log.info(
            "%s registered at %s (%s check)", inst.id, redact_url(reg.base_url), reg.check.type
        )
        return inst

    def _schedule(self, inst: ServiceInstance) -> None:
        """When `expire` must next look at an instance: its ttl check's report or its TTL
        running out, whichever comes first; never, with neither."""
        reg = inst.reg
        times = []
        if reg.check.type == "ttl" and inst.reported != "critical":
            times.append(inst.reported_at + reg.check.interval_s)
        if reg.ttl_s is not None:
            times.append(inst.heartbeat_at + reg.ttl_s)
        if times:
            self._deadlines.set(inst.id, min(times))
        else:
            self._deadlines.discard(inst.id)

    def _remove(self, inst: ServiceInstance, *, reason: str) -> None:
        self.instances.pop(inst.id, None)
        self._deadlines.discard(inst.id)
        if inst.mcp is not None:
            inst.mcp.close_stdin()
        self._unpool(inst.service, inst.id)
        if inst.task is not None:
            inst.task.cancel()
        self._transition(inst, InstanceState.STOPPED, reason)
        self.registry.deregister(inst.id)

    def _unpool(self, service: str, key: str) -> None:
        pool = self.pools.get(service)
        if pool is not None:
            pool.instances.pop(key, None)
            pool.notify()
            if not pool.instances:
                del self.pools[service]

    def _followed(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        """Pool, update or drop another node's HTTP instance as its registry record changes
        (services/remote.py: what this node takes from the record, and what it does not)."""
        if record.node == self.node or record.kind != "http":
            return
        from meshgate.services.remote import RemoteServiceInstance, pool_key, registration_of

        key = pool_key(record)
        current = self.remote.get(key)
        if record.state is InstanceState.STOPPED:
            if current is not None:
                del self.remote[key]
                self._unpool(current.service, key)
                log.info("%s of node %s is gone from the registry", record.id, record.node)
            return
        reg = registration_of(record)
        if isinstance(current, RemoteServiceInstance) and reg == current.reg:
            current.follow(record)
            pool = self.pools.get(record.service)
            if pool is not None:
                pool.notify()
            return
        if current is not None:
            self._unpool(current.service, key)
        if reg is None:
            self.remote.pop(key, None)
            return
        policy = self.policies.get(reg.name, self.policy)
        inst = RemoteServiceInstance(record, reg, policy, health_log=self.health_log)
        self.remote[key] = inst
        pool = self.pools.get(reg.name)
        if pool is None:
            pool = self.pools[reg.name] = ServicePool(reg.name, policy, self._rng)
        pool.instances[key] = inst
        pool.notify()

    def _record(self, inst: ServiceInstance) -> InstanceRecord:
        return InstanceRecord(
            id=inst.id,
            service=inst.service,
            kind="http",
            node=self.node,
            state=inst.state,
            address=inst.reg.base_url,
            weight=inst.reg.weight,
            metadata={"tags": inst.reg.tags, **inst.reg.metadata},
        )

    def _transition(self, inst: ServiceInstance, state: InstanceState, why: str) -> None:
        if inst.health.move(state, why):
            self._moved(inst)

    def _moved(self, inst: ServiceInstance) -> None:
        """Tell the registry and the pool's waiters of the instance's new state."""
        if inst.state is not InstanceState.STOPPED:
            self.registry.update(self._record(inst))
        pool = self.pools.get(inst.service)
        if pool is not None:
            pool.notify()

    async def _check_loop(self, inst: ServiceInstance) -> None:
        def checked(_: CheckResult, new: InstanceState | None) -> None:
            if new is not None:
                self._moved(inst)

        await run_checks(
            inst.health,
            lambda: self._check(inst),
            interval_s=inst.reg.check.interval_s,
            rng=self._rng,
            on_result=checked,
        )

    async def _check(self, inst: ServiceInstance) -> str | None:
        """None when the check passed, else why it failed."""
        check, url = inst.reg.check, inst.reg.base_url
        try:
            async with asyncio.timeout(check.timeout_s):
                if check.type == "tcp":
                    parts = urlsplit(url)
                    port = parts.port or (443 if parts.scheme == "https" else 80)
                    _, writer = await asyncio.open_connection(parts.hostname, port)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return None
                if check.type == "mcp":
                    return await self._mcp_check(inst, url + check.path, check.timeout_s)
                status = await self.client.status(url + check.path, timeout=check.timeout_s)
                if 200 <= status < 300:
                    return None
                return f"HTTP {status} from {check.path}"
        except TimeoutError:
            return f"no answer within {check.timeout_s}s"
        except Unreachable as e:
            return f"cannot connect: {e}"
        except (OSError, ServiceBroken) as e:
            return f"{type(e).__name__}: {e}".rstrip(": ")

    async def _mcp_check(self, inst: ServiceInstance, url: str, timeout: float) -> str | None:
        """A real MCP health check: discovery or the handshake once, then `server/discover`
        or `ping` (per era) each time; a failure starts over with a new connection."""
        try:
            if inst.mcp is None or not inst.mcp.alive:
                conn = HttpUpstream(url, label=inst.id, tls=self.tls)
                inst.mcp_era = (await protocol.establish(conn, timeout=timeout)).era
                inst.mcp = conn
            assert inst.mcp_era is not None
            await protocol.probe(inst.mcp, inst.mcp_era, timeout=timeout)
            return None
        except (ConnectionLost, JsonRpcError) as e:
            if inst.mcp is not None:
                inst.mcp.close_stdin()
            inst.mcp = None
            # The connection's errors name its URL, credentials and all.
            url = inst.reg.base_url
            return f"MCP check failed: {e}".replace(url, redact_url(url))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.expire()

    def expire(self) -> list[str]:
        """Remove every instance whose TTL passed without a heartbeat; their ids."""
        now = self.clock()
        expired: list[str] = []
        for id_ in self._deadlines.due(now):
            inst = self.instances.get(id_)
            if inst is None:
                continue
            self._schedule(inst)  # its next deadline, if neither below applies yet
            check = inst.reg.check
            if (
                check.type == "ttl"
                and inst.reported != "critical"
                and now - inst.reported_at > check.interval_s
            ):
                self._report(inst, "critical", f"no report within the TTL of {check.interval_s}s")
            ttl = inst.reg.ttl_s
            if ttl is not None and now - inst.heartbeat_at > ttl:
                log.warning(
                    "%s: no heartbeat for %.1fs (TTL %.1fs); removed",
                    inst.id,
                    now - inst.heartbeat_at,
                    ttl,
                )
                self.store.delete(inst.id)
                self._remove(inst, reason="TTL expired")
                expired.append(inst.id)
        return expired
