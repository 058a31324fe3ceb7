"""The Consul-compatible API's state (api/consul.py serves it): the change index and the
blocking queries held on it, within their bounds; the reaper of instances critical past their
DeregisterCriticalServiceAfter; TTL check updates; and the `[consul] port` listener's rule
that it serves `/v1/...` only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api.consul_agent import (
    CHECK_ID,
    DEREGISTER_AFTER,
    MAX_OUTPUT,
    duration,
    status_of,
)
from meshgate.api.consul_views import (
    Catalog,
    ChangeIndex,
    Entry,
    NodeView,
)
from meshgate.api.problems import CONSUL_PREFIX
from meshgate.api.responses import json_response
from meshgate.api.routing import disconnected
from meshgate.config.consul import ConsulSettings
from meshgate.errors import InvalidInput, MeshgateError, NotFound, TooManyRequests
from meshgate.observability.audit import audit
from meshgate.observability.metrics import count_rate_limited
from meshgate.registry.base import InstanceRecord, InstanceState, Registry
from meshgate.router import Router
from meshgate.security import principal_of
from meshgate.security.policy import Action
from meshgate.services.mesh import ServiceInstance, ServiceMesh

log = logging.getLogger("meshgate.consul")

REAP_EVERY_S = 1.0
_NOT_EVALUATED = ("filter", "node-meta")


class NoPathToDatacenter(MeshgateError):
    """A query for a datacenter other than this one: Consul answers it so (500)."""


class CriticalReaper:
    """Deregisters this node's instances critical for longer than their check's
    DeregisterCriticalServiceAfter, as Consul's agent does; told of every state by the
    registry."""

    def __init__(
        self, services: ServiceMesh, *, node: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.services = services
        self.node = node
        self.clock = clock
        self.critical_since: dict[str, float] = {}

    def followed(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        if record.node != self.node or record.kind != "http":
            return
        inst = self.services.instances.get(record.id)
        if (
            record.state in (InstanceState.HEALTHY, InstanceState.STOPPED)
            or inst is None
            or DEREGISTER_AFTER not in inst.reg.metadata  # (only these are ever reaped)
        ):
            self.critical_since.pop(record.id, None)
        else:  # Consul counts a check critical from its registration until it first passes
            self.critical_since.setdefault(record.id, self.clock())

    def reap(self) -> list[str]:
        """Deregister every instance past its bound; their ids."""
        now = self.clock()
        reaped = []
        # Only the critical instances, not every one: the reaper runs every second.
        for id_, since in list(self.critical_since.items()):
            inst = self.services.instances.get(id_)
            after = inst.reg.metadata.get(DEREGISTER_AFTER) if inst is not None else None
            if inst is None or after is None or now - since <= float(after):
                continue
            log.warning(
                "%s: critical for %.1fs, past DeregisterCriticalServiceAfter (%ss); deregistered",
                inst.id,
                now - since,
                after,
            )
            if self.services.deregister(inst.service, inst.id):
                audit(
                    "deregister",
                    principal=None,
                    outcome="ok",
                    service=inst.service,
                    instance=inst.id,
                    reason="critical past DeregisterCriticalServiceAfter",
                )
                reaped.append(inst.id)
        return reaped


class ConsulApi:
    """The API's state: the change index and its blocked queries, and the reaper of
    instances critical past their DeregisterCriticalServiceAfter."""

    def __init__(
        self,
        router: Router,
        services: ServiceMesh,
        registry: Registry,
        *,
        settings: ConsulSettings,
        node: str,
        url: str,
        max_body_bytes: int,
        max_json_depth: int,
    ) -> None:
        self.router = router
        self.services = services
        self.settings = settings
        self.node = node
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.index = ChangeIndex()
        self.catalog = Catalog(router, services, node=node, url=url)
        self.held: Counter[str] = Counter()
        self.held_total = 0
        self.reaper = CriticalReaper(services, node=node)
        self._reaper: asyncio.Task[None] | None = None
        self._rng = random.Random()
        registry.subscribe(self._followed)

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="consul critical reaper")

    async def stop(self) -> None:
        self.release()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    def release(self) -> None:
        """Answer every blocked query now (the server is stopping)."""
        self.index.close()

    def _followed(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        self.index.followed(record, previous)
        self.reaper.followed(record, previous)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            self.reaper.reap()

    # -- blocking queries ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _held(self, who: str) -> Iterator[None]:
        s = self.settings
        if self.held_total >= s.max_blocking_queries:
            count_rate_limited("consul_blocking_queries")
            raise TooManyRequests(
                f"Too many blocking queries: {s.max_blocking_queries} are held on this node "
                "(consul.max_blocking_queries)",
                retry_after=1,
            )
        if self.held[who] >= s.max_blocking_queries_per_principal:
            count_rate_limited("consul_blocking_queries_per_principal")
            raise TooManyRequests(
                f"Too many blocking queries: {who} holds "
                f"{s.max_blocking_queries_per_principal} "
                "(consul.max_blocking_queries_per_principal)",
                retry_after=1,
            )
        self.held[who] += 1
        self.held_total += 1
        try:
            yield
        finally:
            self.held_total -= 1
            self.held[who] -= 1
            if not self.held[who]:
                del self.held[who]

    async def query(self, request: Request, service: str | None) -> int:
        """Check a read's query parameters and hold a blocking one (`?index=N`) until the
        index (of `service`, or overall) passes N or its wait is over; the index to answer
        with."""
        q = request.query_params
        dc = q.get("dc")
        if dc and dc != self.settings.datacenter:
            raise NoPathToDatacenter("No path to datacenter")
        for name in _NOT_EVALUATED:
            if name in q:
                raise InvalidInput(f"Invalid {name}: meshgate does not evaluate ?{name}")
        raw = q.get("index")
        if raw is not None:
            # A uint64, as Consul's: ASCII digits (int() takes others) and at most 20 of them.
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
                raise InvalidInput(f"Invalid index: {raw[:40]!r}")
            index = int(raw)
            cap = self.settings.max_wait_s
            wait = min(duration(q["wait"], "wait time"), cap) if q.get("wait") else cap
            # Consul spreads the wake-ups of queries that wait alike by up to wait/16.
            wait = min(cap, wait + self._rng.uniform(0, wait / 16))
            if index > 0 and wait > 0:
                with self._held(principal_of(request.scope).name):
                    await _unless_gone(request, self.index.wait_past(index, service, wait))
        return self.index.current if service is None else self.index.service(service)

    def answer(self, value: Any, index: int) -> Response:
        return json_response(
            value,
            headers={
                "X-Consul-Index": str(index),
                "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0",
            },
        )

    # -- reads ---------------------------------------------------------------------------------

    async def admit_read(self, request: Request) -> None:
        """Refuse (403) a caller who may not discover the mesh; count its rate limits."""
        await self.router.gate.admit(principal_of(request.scope), Action.mesh("discover"))

    def visible(
        self,
        request: Request,
        service: str | None = None,
        nodes: dict[str, NodeView] | None = None,
    ) -> list[Entry]:
        """The entries (of `service`) the caller may discover (admitted already)."""
        principal = principal_of(request.scope)
        gate = self.router.gate
        return [
            e
            for e in self.catalog.entries(service, nodes)
            if gate.allows(principal, Action.mesh("discover", e.name))
        ]

    def node_of(self, e: Entry, nodes: dict[str, NodeView]) -> NodeView:
        return nodes.get(e.node) or NodeView(e.node, e.address, e.port, "", {})

    # -- writes --------------------------------------------------------------------------------

    def by_check(self, check_id: str) -> ServiceInstance:
        for inst in self.services.instances.values():
            if (inst.reg.metadata.get(CHECK_ID) or f"service:{inst.id}") == check_id:
                return inst
        raise NotFound(
            f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the '
            "check name."
        )

    async def update(self, request: Request, check_id: str, status: str, output: str) -> Response:
        inst = self.by_check(check_id)
        await self.router.gate.admit(
            principal_of(request.scope), Action.mesh("register", inst.service)
        )
        if inst.reg.check.type != "ttl":
            raise InvalidInput(f'CheckID "{check_id}" does not have associated TTL')
        reported = status_of(status)
        assert reported is not None
        self.services.report(inst.service, inst.id, reported, output[:MAX_OUTPUT])
        self.index.touch(inst.service)  # warning <-> passing moves no state, yet shows
        return Response(status_code=200)


async def _unless_gone(request: Request, wait: Coroutine[Any, Any, None]) -> None:
    """Wait, unless the client leaves first: its slot is freed then, not at the wait's end
    (and no error is raised: nobody is left to answer)."""
    waiting = asyncio.ensure_future(wait)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (waiting, gone):
            if not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await future


class OwnPort:
    """ASGI middleware: on the `[consul] port` listener only `/v1/...` is served."""

    def __init__(self, app: ASGIApp, *, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (
            scope["type"] == "http"
            and server
            and server[1] == self.port
            and not scope["path"].startswith(CONSUL_PREFIX)
        ):
            response = Response(
                "this port serves only the Consul-compatible API (/v1/...)",
                status_code=404,
                media_type="text/plain",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
