"""The one call path: interceptors -> resolve -> healthy -> breaker -> balancer -> Attempt ->
outcome -> retry.

Every entry (REST tool calls, `/mcp`, `/sse`, the HTTP proxy, task workers) hands the router a
`Call`; the router runs the interceptor chain on it once, then one loop routes it, whatever the
kind of instance behind (an MCP server instance or an HTTP service instance; see
`router.attempts`). The loop reserves an in-flight slot (waiting in a bounded queue when every
instance is busy), sends one attempt, records its outcome on the instance's breaker and latency
average, and sends the call again elsewhere only when that is safe: the request never reached
the failed instance, or the call is retry-safe (a read-only or idempotent tool, an idempotent
HTTP method). One deadline covers every attempt and every wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import cast

from meshgate.errors import (
    CircuitOpen,
    InvalidArguments,
    LoopDetected,
    NoHealthyInstance,
    Overloaded,
    SessionInstanceLost,
    ShuttingDown,
    UnknownService,
    UnknownTool,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.observability import tracing
from meshgate.observability.audit import audit
from meshgate.observability.measure import Measure
from meshgate.observability.metrics import metrics, outcome_of
from meshgate.observability.topology import EdgeLog
from meshgate.observability.window import CallWindow
from meshgate.registry.base import InstanceState
from meshgate.resilience import Deadline, backoff_delay
from meshgate.router.attempts import (
    Attempt,
    Failed,
    HttpAttempt,
    McpAttempt,
    ProgressHandler,
    ServerRequestHandler,
)
from meshgate.router.call import Call
from meshgate.router.cluster import Cluster
from meshgate.router.interceptors import Chain
from meshgate.router.picking import (
    FILTERED_LISTS,
    IDEMPOTENT_METHODS,
    Balanced,
    P,
    Pin,
    R,
    action_of,
    tool_is_retry_safe,
    tool_label,
)
from meshgate.security.gate import Gate
from meshgate.services.http import ServiceResponse
from meshgate.services.mesh import ServiceInstance, ServiceMesh
from meshgate.upstream.instance import Instance
from meshgate.upstream.supervisor import ServerPool, Supervisor
from meshgate.wire.jsonrpc import JSON

log = logging.getLogger("meshgate.router")


class Router:
    """Routes calls to instances of the supervisor's MCP pools and the mesh's HTTP services."""

    def __init__(
        self,
        supervisor: Supervisor,
        services: ServiceMesh | None = None,
        *,
        interceptors: Chain | None = None,
        gate: Gate | None = None,
        min_timeout_s: float = 0.05,
        audit_tool_calls: bool = False,
        cluster: Cluster | None = None,
        max_hops: int = 8,
    ) -> None:
        self.audit_tool_calls = audit_tool_calls
        self.cluster = cluster
        self.max_hops = max_hops
        self.supervisor = supervisor
        self.services = services
        self.edges = EdgeLog()
        self.window = CallWindow()  # what /stats reads
        self.interceptors = interceptors or Chain()
        self.gate = gate or Gate()
        self.min_timeout_s = min_timeout_s
        self.in_flight = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    def _record(self, service: str, tool: str, outcome: str, seconds: float) -> None:
        """Where every routed call's outcome goes: the call histogram and the rolling window."""
        metrics.call(service, tool, outcome, seconds)
        self.window.record(service, outcome, seconds)

    def pool(self, service: str) -> ServerPool:
        pool = self.supervisor.pools.get(service)
        if pool is None and self.cluster is not None:
            pool = self.cluster.remote.get(service)  # a server only other nodes run
        if pool is None:
            raise UnknownService(f"no MCP server named {service!r}")
        return pool

    def pools(self) -> dict[str, ServerPool]:
        """Every MCP server calls can reach: this node's, then those only peers run."""
        if self.cluster is None:
            return self.supervisor.pools
        return self.cluster.pools()

    async def admit(self, call: Call) -> Call:
        """Check a call once: the gate (policy, limits) for its principal, then the interceptor
        chain. An entry that must decide before routing (a task to enqueue, a tool call that
        may become a task) admits first; the router admits the rest."""
        if call.admitted:
            return call
        if call.hops >= self.max_hops:
            raise LoopDetected(
                f"this call has already passed through {call.hops} gateways (max_hops = "
                f"{self.max_hops}); the nodes' views of each other disagree",
                extra={"hops": call.hops, "max_hops": self.max_hops},
            )
        # A tool listing is filtered tool by tool by the front end, not refused whole.
        if call.entry != "internal" and call.method not in FILTERED_LISTS:
            await self.gate.admit(call.principal, action_of(call))
        call.caller = self.gate.caller(call.principal, call.caller)
        self.interceptors.run(call)
        # Again: a `caller` interceptor may have taken the header's word.
        call.caller = self.gate.caller(call.principal, call.caller)
        call.admitted = True
        if self.audit_tool_calls and call.kind == "mcp" and call.method == "tools/call":
            audit(
                "tool_call",
                principal=call.principal.name,
                outcome="admitted",
                server=call.service,
                tool=call.target,
                entry=call.entry,
                caller=call.caller,
            )
        return call

    # -- entries -------------------------------------------------------------------------------

    async def call_tool(
        self,
        service: str,
        tool: str,
        arguments: JSON,
        *,
        call: Call,
        key: str | None = None,
        on_progress: ProgressHandler | None = None,
    ) -> JSON:
        """Call one tool; returns the MCP `tools/call` result."""
        await self.admit(call)  # before anything is looked up: nothing is told to strangers
        pool = self.pool(service)
        if tool not in pool.tools:
            if not pool.tools and not pool.routable():
                raise NoHealthyInstance(f"{service} has no healthy instance to list its tools")
            raise UnknownTool(f"{service} has no tool named {tool!r}")
        return await self.call(
            service,
            "tools/call",
            {"name": tool, "arguments": arguments},
            call=call,
            key=key,
            retry_safe=tool_is_retry_safe(pool, tool),
            on_progress=on_progress,
        )

    async def call(
        self,
        service: str,
        method: str,
        params: JSON,
        *,
        call: Call,
        key: str | None = None,
        retry_safe: bool = False,
        on_progress: ProgressHandler | None = None,
        on_server_request: ServerRequestHandler | None = None,
        pin: Pin | None = None,
        on_instance: Callable[[Instance], None] | None = None,
    ) -> JSON:
        """Send one MCP request to a healthy instance of `service`, retrying only when safe.

        With a `pin` (sticky and dedicated sessions) every call goes to the instance the first
        one picked; when that instance is gone the call raises SessionInstanceLost and is not
        retried. Measured (`meshgate_call_duration_seconds`) and, with tracing on, one span.
        """
        pool = self.pool(service)
        await self.admit(call)
        if call.meta:
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta or {}), **call.meta}}
        tool = tool_label(pool, method, params)
        t = tracing.active()
        span = None
        if t is not None:
            name = f"{method} {service}" + (f"/{tool}" if tool != method else "")
            span = t.start_span(
                name, attributes={"meshgate.service": service, "rpc.method": method}
            )
        attempt = McpAttempt(
            service,
            method,
            params,
            on_progress=on_progress,
            on_server_request=on_server_request,
            call=call,
            credentials=self.cluster.credentials if self.cluster is not None else None,
            peer_down_s=self.cluster.lease_s / 3 if self.cluster is not None else 5.0,
        )
        with Measure(partial(self._record, service, tool), outcome_of, span):
            return await self._route(
                pool,
                attempt,
                call,
                key=key,
                retry_safe=retry_safe,
                unsafe=f"{method} {tool} is not marked read-only or idempotent"
                if method == "tools/call"
                else f"{method} is not safe to repeat",
                pin=pin,
                on_instance=on_instance,
            )

    async def proxy(
        self,
        service: str,
        method: str,
        path: str,
        *,
        call: Call,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | AsyncIterator[bytes] = b"",
        key: str | None = None,
        on_instance: Callable[[ServiceInstance], None] | None = None,
    ) -> ServiceResponse:
        """Send one HTTP request to a healthy instance of an HTTP service; retried on another
        instance only when it never reached the first, or the method is idempotent.

        Returns the response with its body not yet read: the caller streams it, then closes it.
        A streamed request body (an iterator) is retried only when no connection was made,
        when not a byte of it has been read. Measured until the response's head arrives (a 5xx
        counts as `error`) and, with tracing on, one span.
        """
        pool = self.services.pools.get(service) if self.services is not None else None
        if pool is None or self.services is None:
            raise UnknownService(f"no HTTP service named {service!r}")
        await self.admit(call)
        added = {k.lower() for k in call.headers}
        out = [(k, v) for k, v in headers or [] if k.lower() not in added]
        out += list(call.headers.items())
        t = tracing.active()
        span = None
        if t is not None:
            span = t.start_span(
                f"{method} {service}", attributes={"meshgate.service": service, "url.path": path}
            )
        attempt = HttpAttempt(
            self.services.client,
            method,
            path,
            query=query,
            headers=out,
            body=body,
            hops=call.hops,
        )
        with Measure(partial(self._record, service, ""), outcome_of, span) as m:
            response = await self._route(
                pool,
                attempt,
                call,
                key=key,
                retry_safe=method.upper() in IDEMPOTENT_METHODS,
                unsafe=f"{method} is not idempotent",
                on_instance=on_instance,
            )
            if response.status_code >= 500:
                m.outcome = "error"
            return response

    # -- the loop ------------------------------------------------------------------------------

    async def _route(
        self,
        pool: Balanced[P],
        attempt: Attempt[P, R],
        call: Call,
        *,
        key: str | None,
        retry_safe: bool,
        unsafe: str = "",
        pin: Pin | None = None,
        on_instance: Callable[[P], None] | None = None,
    ) -> R:
        """Route one call: pick, send, record, and retry while it is safe and time is left."""
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down")
        policy = pool.policy
        if (
            call.timeout_s is not None
            and call.hops == 0
            and call.entry != "task"
            and call.timeout_s < self.min_timeout_s
        ):
            raise InvalidArguments(
                f"a deadline of {call.timeout_s:g}s is shorter than the minimum of "
                f"{self.min_timeout_s:g}s (min_call_timeout_s)",
                extra={"minimum": self.min_timeout_s},
            )
        deadline = call.deadline(policy.call_timeout_s)
        hurried = call.caller_is_hurried(policy.call_timeout_s)
        pool.budget.record_request()
        self._enter()
        tried: set[int] = set()
        ok = False
        try:
            for number in range(1, policy.retry.max_attempts + 1):
                if pin is not None and pin.instance is not None:
                    # Pins exist for MCP sessions only: P is Instance here.
                    inst = cast(P, await self._acquire_pinned(pool, pin.instance, deadline))
                else:
                    inst = await self._acquire(pool, deadline, tried, key)
                    if pin is not None:
                        pin.instance = cast(Instance, inst)
                if on_instance is not None:
                    on_instance(inst)
                started = time.monotonic()
                try:
                    result = await attempt.send(inst, max(0.001, deadline.remaining()), hurried)
                except Failed as e:
                    f = e.failure
                    if f.blame:
                        inst.breaker.on_failure()
                    elif f.answered:
                        inst.breaker.on_success(time.monotonic() - started)
                    else:  # the caller's own deadline ran out: no verdict on the instance
                        inst.breaker.on_abandon()
                    if not f.retryable:
                        raise f.error from None
                    tried.add(id(inst))
                    if pin is not None:
                        raise SessionInstanceLost(
                            f"{inst.id}, which held this session's state, is gone; start a new "
                            "session"
                        ) from None
                    if f.reached and not retry_safe:
                        f.error.detail += f"; not retried because {unsafe}"
                        raise f.error from None
                    if not f.reached and not pool.routable() and not pool.restarting():
                        # Nothing else to try (a peer node that is gone): say so at once.
                        raise NoHealthyInstance(
                            f"{f.error.detail}; {pool.name} has no other healthy instance",
                            retry_after=pool.retry_after(),
                        ) from None
                    await self._before_retry(pool, number, deadline, f.error.detail)
                    continue
                except asyncio.CancelledError:
                    inst.breaker.on_abandon()
                    raise
                finally:
                    inst.in_flight -= 1
                    pool.notify()
                elapsed = time.monotonic() - started
                if attempt.healthy(result):
                    inst.breaker.on_success(elapsed)
                    inst.observe_latency(elapsed)
                    ok = True
                else:
                    inst.breaker.on_failure()
                return result
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._leave()
            self.edges.record(call.caller, pool.name, ok=ok)

    async def _before_retry(
        self, pool: Balanced[P], attempt: int, deadline: Deadline, why: str
    ) -> None:
        """Wait out the backoff before another attempt, or raise if none is left (attempts,
        the pool's retry budget, or the deadline)."""
        if attempt >= pool.policy.retry.max_attempts or not pool.budget.try_spend():
            raise UpstreamError(f"{why}; retries exhausted")
        delay = backoff_delay(attempt, pool.retry_backoff, pool.rng)
        if delay >= deadline.remaining():
            raise UpstreamTimeout(f"{why}; no time left in the deadline for a retry")
        log.info("retrying on %s: %s", pool.name, why)
        metrics.retry(pool.name)
        await asyncio.sleep(delay)

    async def _acquire_pinned(
        self, pool: Balanced[P], inst: Instance, deadline: Deadline
    ) -> Instance:
        """Reserve a slot on the pinned instance, waiting while it is busy or unhealthy."""
        while True:
            if not inst.conn.alive or inst.state is InstanceState.STOPPED:
                raise SessionInstanceLost(
                    f"{inst.id}, which held this session's state, is gone; start a new session"
                )
            free = inst.in_flight < pool.policy.max_in_flight
            if inst.routable and free and inst.breaker.available() and inst.breaker.acquire():
                inst.in_flight += 1
                return inst
            remaining = deadline.remaining()
            if remaining <= 0:
                raise Overloaded(f"{inst.id}, this session's instance, did not free up in time")
            await pool.wait_changed(remaining)

    async def _acquire(
        self, pool: Balanced[P], deadline: Deadline, tried: set[int], key: str | None
    ) -> P:
        """Reserve an in-flight slot on an instance, waiting in the bounded queue while every
        instance is busy, or (an MCP pool only) while one restarts, within `restart_wait_s`."""
        queued = False
        restart_wait: Deadline | None = None
        try:
            while True:
                routable = pool.routable()
                candidates = [i for i in routable if id(i) not in tried] or routable
                if candidates:
                    open_ = [i for i in candidates if i.breaker.available()]
                    if not open_:
                        raise CircuitOpen(
                            f"every instance of {pool.name} has an open circuit breaker",
                            retry_after=min(i.breaker.retry_after() for i in candidates),
                        )
                    free = [i for i in open_ if i.in_flight < pool.policy.max_in_flight]
                    if free:
                        inst = pool.balancer.pick(free, key)
                        if inst.breaker.acquire():
                            inst.in_flight += 1
                            return inst
                        continue
                    wait_until = deadline
                else:
                    # No healthy instance: wait only for one that is restarting, briefly.
                    if not pool.restarting():
                        raise NoHealthyInstance(
                            f"{pool.name} has no healthy instance",
                            retry_after=pool.retry_after(),
                        )
                    if restart_wait is None:
                        restart_wait = Deadline.after(pool.restart_wait_s())
                    wait_until = min(deadline, restart_wait, key=lambda d: d.at)
                if not queued:
                    if pool.waiters >= pool.policy.queue_size:
                        raise Overloaded(
                            f"{pool.name}: every instance is busy and the queue is full"
                        )
                    pool.waiters += 1
                    queued = True
                remaining = wait_until.remaining()
                if remaining <= 0:
                    if candidates:
                        raise Overloaded(f"{pool.name}: no instance freed up before the deadline")
                    raise NoHealthyInstance(
                        f"{pool.name} has no healthy instance (an instance is restarting)",
                        retry_after=pool.retry_after(),
                    )
                await pool.wait_changed(remaining)
        finally:
            if queued:
                pool.waiters -= 1

    # -- draining ------------------------------------------------------------------------------

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Stop accepting calls and wait for those in flight; False if the grace ran out."""
        self.accepting = False
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%d calls still in flight after %.1fs of draining", self.in_flight, grace_s)
            return False
        return True
