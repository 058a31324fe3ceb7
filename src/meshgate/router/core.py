"""The one call path: service -> healthy instances -> breaker -> balancer -> transport.

Every caller (REST, MCP front ends, task workers) goes through `Router.call`. It records each
outcome on the instance's circuit breaker and latency average, waits in a bounded queue when
every instance is at its in-flight limit, and retries on another instance only when that is
safe (DESIGN.md, "Retry safety"): the request never reached the failed instance, or the tool
is declared read-only or idempotent, or the configuration says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from meshgate.balancer import Balancer
from meshgate.config import ServerPolicy
from meshgate.errors import (
    CircuitOpen,
    InvalidArguments,
    NoHealthyInstance,
    Overloaded,
    SessionInstanceLost,
    ShuttingDown,
    UnknownService,
    UnknownTool,
    UpstreamCrashed,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.observability import tracing
from meshgate.observability.measure import Measure
from meshgate.observability.metrics import metrics, outcome_of
from meshgate.observability.topology import EdgeLog
from meshgate.registry.base import InstanceState
from meshgate.resilience import (
    BackoffPolicy,
    CircuitBreaker,
    Deadline,
    RetryBudget,
    backoff_delay,
)
from meshgate.router.interceptors import Chain
from meshgate.services.http import (
    ServiceBroken,
    ServiceClient,
    ServiceResponse,
    ServiceTimeout,
    Unreachable,
)
from meshgate.services.mesh import ServiceMesh, ServicePool
from meshgate.upstream.instance import Instance
from meshgate.upstream.supervisor import ServerPool, Supervisor
from meshgate.wire.connection import ConnectionLost, ResponseTooLarge
from meshgate.wire.jsonrpc import INVALID_PARAMS, JSON, METHOD_NOT_FOUND, JsonRpcError

log = logging.getLogger("meshgate.router")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
ProgressHandler = Callable[[str, JSON], None]
ServerRequestHandler = Callable[[str, JSON], Awaitable[JSON]]


def _tool_label(pool: ServerPool, method: str, params: JSON) -> str:
    """The `tool` label of a call: a tool the server lists, `other` for a name it does not
    (labels stay bounded), or the MCP method for other requests."""
    if method != "tools/call":
        return method
    name = params.get("name")
    return name if isinstance(name, str) and name in pool.tools else "other"


def _attempt_outcome(error: BaseException | None) -> str:
    """The `outcome` label of one attempt, from what the connection or client raised."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, TimeoutError):  # ServiceTimeout too
        return "timeout"
    if isinstance(error, ConnectionLost | Unreachable | ServiceBroken):
        return "crashed"
    return "error"


def tool_is_retry_safe(pool: ServerPool, tool: str) -> bool:
    """A tool may be re-sent after a mid-call failure: declared or configured idempotent."""
    if tool in pool.policy.idempotent_tools:
        return True
    annotations = pool.tools.get(tool, {}).get("annotations") or {}
    return bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))


def hash_key(
    pool: ServerPool, *, session: str | None, client: str | None, arguments: JSON
) -> str | None:
    """The consistent-hash key of a call, by the pool's `hash_key` setting; None otherwise."""
    if pool.policy.strategy not in ("consistent_hash", "ip_hash"):
        return None
    source = pool.policy.hash_key
    if source == "session":
        return session
    if source.startswith("arg:"):
        value = arguments.get(source[4:])
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


P = TypeVar("P", bound=Pickable)


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

    def recoverable(self) -> bool: ...

    async def wait_changed(self, timeout: float) -> None: ...


class Pin:
    """The instance a client session is held to: in `sticky` mode the one its first call
    picked, in `dedicated` mode the process claimed for it (released when the session ends)."""

    def __init__(self) -> None:
        self.instance: Instance | None = None
        self.release: Callable[[Instance], Awaitable[None]] | None = None
        self.lock = asyncio.Lock()


class Router:
    """Routes MCP requests to instances of the supervisor's pools."""

    def __init__(self, supervisor: Supervisor, services: ServiceMesh | None = None) -> None:
        self.supervisor = supervisor
        self.services = services
        self.edges = EdgeLog()
        self.interceptors = Chain()
        self.in_flight = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    def pool(self, service: str) -> ServerPool:
        pool = self.supervisor.pools.get(service)
        if pool is None:
            raise UnknownService(f"no MCP server named {service!r}")
        return pool

    async def call_tool(
        self,
        service: str,
        tool: str,
        arguments: JSON,
        *,
        timeout_s: float | None = None,
        key: str | None = None,
        on_progress: ProgressHandler | None = None,
        caller: str | None = None,
        meta: JSON | None = None,
    ) -> JSON:
        """Call one tool; returns the MCP `tools/call` result."""
        pool = self.pool(service)
        if tool not in pool.tools:
            if not pool.tools and not pool.routable():
                raise NoHealthyInstance(f"{service} has no healthy instance to list its tools")
            raise UnknownTool(f"{service} has no tool named {tool!r}")
        return await self.call(
            service,
            "tools/call",
            {"name": tool, "arguments": arguments, **({"_meta": meta} if meta else {})},
            timeout_s=timeout_s,
            key=key,
            retry_safe=tool_is_retry_safe(pool, tool),
            on_progress=on_progress,
            caller=caller,
        )

    async def call(
        self,
        service: str,
        method: str,
        params: JSON,
        *,
        timeout_s: float | None = None,
        key: str | None = None,
        retry_safe: bool = False,
        on_progress: ProgressHandler | None = None,
        on_server_request: ServerRequestHandler | None = None,
        pin: Pin | None = None,
        on_instance: Callable[[Instance], None] | None = None,
        caller: str | None = None,
    ) -> JSON:
        """Send one request to a healthy instance of `service`, retrying only when safe.

        With a `pin` (sticky sessions) every call goes to the instance the first one picked;
        when that instance is gone the call raises SessionInstanceLost and is not retried.
        Measured (`meshgate_call_duration_seconds`) and, with tracing on, one span.
        """
        pool = self.pool(service)
        tool = _tool_label(pool, method, params)
        t = tracing.active()
        span = None
        if t is not None:
            name = f"{method} {service}" + (f"/{tool}" if tool != method else "")
            span = t.start_span(
                name, attributes={"meshgate.service": service, "rpc.method": method}
            )
        with Measure(partial(metrics.call, service, tool), outcome_of, span):
            return await self._call(
                pool,
                method,
                params,
                timeout_s=timeout_s,
                key=key,
                retry_safe=retry_safe,
                on_progress=on_progress,
                on_server_request=on_server_request,
                pin=pin,
                on_instance=on_instance,
                caller=caller,
            )

    async def _call(
        self,
        pool: ServerPool,
        method: str,
        params: JSON,
        *,
        timeout_s: float | None,
        key: str | None,
        retry_safe: bool,
        on_progress: ProgressHandler | None,
        on_server_request: ServerRequestHandler | None,
        pin: Pin | None,
        on_instance: Callable[[Instance], None] | None,
        caller: str | None,
    ) -> JSON:
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down")
        service = pool.name
        policy = pool.policy
        deadline = Deadline.after(timeout_s if timeout_s is not None else policy.call_timeout_s)
        pool.budget.record_request()
        self._enter()
        tried: set[int] = set()
        ok = False
        try:
            for attempt in range(1, policy.retry.max_attempts + 1):
                if pin is not None and pin.instance is not None:
                    inst = await self._acquire_pinned(pool, pin.instance, deadline)
                else:
                    inst = await self._acquire(pool, deadline, tried, key)
                    if pin is not None:
                        pin.instance = inst
                if on_instance is not None:
                    on_instance(inst)
                started = time.monotonic()
                try:
                    result = await self._request(
                        inst,
                        method,
                        params,
                        timeout=deadline.remaining(),
                        on_progress=on_progress,
                        on_server_request=on_server_request,
                    )
                except JsonRpcError as e:
                    # The instance answered: it is working, whatever it thinks of the request.
                    inst.breaker.on_success(time.monotonic() - started)
                    raise _map_rpc_error(service, method, e) from None
                except TimeoutError:
                    inst.breaker.on_failure()
                    raise UpstreamTimeout(
                        f"{inst.id} did not answer {method} within the deadline"
                    ) from None
                except ResponseTooLarge as e:
                    inst.breaker.on_failure()
                    raise UpstreamError(f"{inst.id}: {e}") from None
                except ConnectionLost as e:
                    inst.breaker.on_failure()
                    tried.add(id(inst))
                    if pin is not None:
                        raise SessionInstanceLost(
                            f"{inst.id}, which held this session's state, exited; start a new "
                            "session"
                        ) from None
                    safe = retry_safe or not e.sent
                    if not safe:
                        raise UpstreamCrashed(
                            f"{inst.id} exited while {method} was in flight; not retried because "
                            "the tool is not marked read-only or idempotent"
                        ) from None
                    await self._before_retry(
                        pool, attempt, deadline, f"{inst.id} exited while {method} was in flight"
                    )
                    continue
                except asyncio.CancelledError:
                    inst.breaker.on_abandon()
                    raise
                else:
                    elapsed = time.monotonic() - started
                    inst.breaker.on_success(elapsed)
                    inst.observe_latency(elapsed)
                    ok = True
                    return result
                finally:
                    inst.in_flight -= 1
                    pool.notify()
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._leave()
            self.edges.record(caller, service, ok=ok)

    async def _request(
        self,
        inst: Instance,
        method: str,
        params: JSON,
        *,
        timeout: float,
        on_progress: ProgressHandler | None,
        on_server_request: ServerRequestHandler | None,
    ) -> JSON:
        """One attempt on one instance: measured, and with tracing on a client span whose
        context travels in `params._meta`."""
        t = tracing.active()
        span = None
        if t is not None:
            span = t.start_span(
                f"{method} {inst.id}",
                kind=tracing.SpanKind.CLIENT,
                attributes={"meshgate.instance": inst.id, "rpc.method": method},
            )
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta or {}), **tracing.inject(span)}}
        with Measure(partial(metrics.attempt, inst.server, inst.id), _attempt_outcome, span):
            return await inst.conn.request(
                method,
                params,
                timeout=timeout,
                on_progress=on_progress,
                on_server_request=on_server_request,
            )

    async def proxy(
        self,
        service: str,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | AsyncIterator[bytes] = b"",
        timeout_s: float | None = None,
        caller: str | None = None,
    ) -> ServiceResponse:
        """Send one HTTP request to a healthy instance of an HTTP service; the same path as
        MCP calls (breaker, balancer, in-flight limit, deadline), retried on another instance
        only when that is safe: it never reached the instance, or the method is idempotent.

        Returns the response with its body not yet read: the caller streams it, then closes it.
        A streamed request body (an iterator) is retried only when no connection was made,
        when not a byte of it has been read. Measured until the response's head arrives (a 5xx
        counts as `error`) and, with tracing on, one span.
        """
        pool = self.services.pools.get(service) if self.services is not None else None
        if pool is None or self.services is None:
            raise UnknownService(f"no HTTP service named {service!r}")
        t = tracing.active()
        span = None
        if t is not None:
            span = t.start_span(
                f"{method} {service}", attributes={"meshgate.service": service, "url.path": path}
            )
        with Measure(partial(metrics.call, service, ""), outcome_of, span) as m:
            response = await self._proxy(
                pool,
                self.services.client,
                method,
                path,
                query=query,
                headers=headers,
                body=body,
                timeout_s=timeout_s,
                caller=caller,
            )
            if response.status_code >= 500:
                m.outcome = "error"
            return response

    async def _proxy(
        self,
        pool: ServicePool,
        client: ServiceClient,
        method: str,
        path: str,
        *,
        query: str,
        headers: list[tuple[str, str]] | None,
        body: bytes | AsyncIterator[bytes],
        timeout_s: float | None,
        caller: str | None,
    ) -> ServiceResponse:
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down")
        service = pool.name
        policy = pool.policy
        deadline = Deadline.after(timeout_s if timeout_s is not None else policy.call_timeout_s)
        safe_method = method.upper() in IDEMPOTENT_METHODS
        pool.budget.record_request()
        self._enter()
        tried: set[int] = set()
        ok = False
        try:
            for attempt in range(1, policy.retry.max_attempts + 1):
                inst = await self._acquire(pool, deadline, tried, None)
                started = time.monotonic()
                url = inst.reg.base_url + path + (f"?{query}" if query else "")
                reached = True
                try:
                    response = await self._send(
                        client,
                        inst.id,
                        service,
                        method,
                        url,
                        headers or [],
                        body,
                        max(0.001, deadline.remaining()),
                    )
                except Unreachable as e:
                    reached, error = False, f"{inst.id}: cannot connect: {e}"
                except ServiceTimeout:
                    inst.breaker.on_failure()
                    raise UpstreamTimeout(
                        f"{inst.id} did not answer {method} {path} within the deadline"
                    ) from None
                except ServiceBroken as e:
                    error = f"{inst.id} failed mid-request: {e}"
                except asyncio.CancelledError:
                    inst.breaker.on_abandon()
                    raise
                else:
                    elapsed = time.monotonic() - started
                    if response.status_code in (502, 503, 504):
                        inst.breaker.on_failure()
                    else:
                        inst.breaker.on_success(elapsed)
                        inst.observe_latency(elapsed)
                    ok = response.status_code < 500
                    return response
                finally:
                    inst.in_flight -= 1
                    pool.notify()
                inst.breaker.on_failure()
                tried.add(id(inst))
                if reached and not safe_method:
                    raise UpstreamCrashed(
                        f"{error}; not retried because {method} is not idempotent"
                    )
                await self._before_retry(pool, attempt, deadline, f"{method} {path}: {error}")
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._leave()
            self.edges.record(caller, service, ok=ok)

    async def _send(
        self,
        client: ServiceClient,
        instance: str,
        service: str,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes],
        timeout: float,
    ) -> ServiceResponse:
        """One attempt of a proxied call, measured and (with tracing on) a client span whose
        context travels in the request's headers."""
        t = tracing.active()
        span = None
        if t is not None:
            span = t.start_span(
                f"{method} {instance}",
                kind=tracing.SpanKind.CLIENT,
                attributes={"meshgate.instance": instance, "url.path": urlsplit(url).path},
            )
            context = tracing.inject(span)
            headers = [(k, v) for k, v in headers if k.lower() not in context] + [*context.items()]
        with Measure(partial(metrics.attempt, service, instance), _attempt_outcome, span) as m:
            response = await client.request(
                method, url, headers=headers, body=body, timeout=timeout
            )
            if response.status_code >= 500:
                m.outcome = "error"
            return response

    async def _before_retry(
        self, pool: Balanced[P], attempt: int, deadline: Deadline, why: str
    ) -> None:
        """Wait out the backoff before another attempt, or raise if none is left (attempts,
        or the pool's retry budget)."""
        if attempt >= pool.policy.retry.max_attempts or not pool.budget.try_spend():
            raise UpstreamError(f"{why}; retries exhausted")
        log.info("retrying on %s: %s", pool.name, why)
        metrics.retry(pool.name)
        delay = backoff_delay(attempt, pool.retry_backoff, pool.rng)
        await asyncio.sleep(min(delay, deadline.remaining()))

    async def _acquire_pinned(
        self, pool: ServerPool, inst: Instance, deadline: Deadline
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
        """Reserve an in-flight slot on an instance, waiting in the bounded queue if needed."""
        queued = False
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
                elif not pool.recoverable():
                    raise NoHealthyInstance(f"{pool.name} has no healthy instance")
                # Every instance is busy or (re)starting: wait, within the queue bound.
                if not queued:
                    if pool.waiters >= pool.policy.queue_size:
                        raise Overloaded(
                            f"{pool.name}: every instance is busy and the queue is full"
                        )
                    pool.waiters += 1
                    queued = True
                remaining = deadline.remaining()
                if remaining <= 0:
                    if candidates:
                        raise Overloaded(f"{pool.name}: no instance freed up before the deadline")
                    raise NoHealthyInstance(
                        f"{pool.name} has no healthy instance (waited for a restart)"
                    )
                await pool.wait_changed(remaining)
        finally:
            if queued:
                pool.waiters -= 1

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


def _map_rpc_error(service: str, method: str, e: JsonRpcError) -> Exception:
    extra: dict[str, Any] = {"upstream_code": e.code, "upstream_message": e.message}
    if e.data is not None:
        extra["upstream_data"] = e.data
    if e.code == INVALID_PARAMS:
        return InvalidArguments(f"{service} rejected the arguments: {e.message}", extra=extra)
    if e.code == METHOD_NOT_FOUND:
        return UpstreamError(f"{service} does not support {method}: {e.message}", extra=extra)
    return UpstreamError(f"{service} answered {method} with an error: {e.message}", extra=extra)
