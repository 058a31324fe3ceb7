"""What operators and orchestrators read: `/metrics`, `/livez`, `/readyz`, and the recent traces
(`/api/v1/mesh/v2/traces`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from meshgate.api.auth import requires
from meshgate.api.openapi import ok, problems
from meshgate.api.responses import json_response
from meshgate.errors import InvalidArguments, NotFound
from meshgate.observability import tracing
from meshgate.observability.metrics import BREAKER_VALUES, CONTENT_TYPE, metrics
from meshgate.router import Router


def build(
    router: Router,
    *,
    registry_status: Callable[[], dict[str, Any]],
    queue_status: Callable[[], Awaitable[dict[str, Any]]],
    sessions: Callable[[], int],
    started: Callable[[], bool],
) -> APIRouter:
    api = APIRouter(tags=["operations"])

    def instance_gauges(service: str, kind: str, states: list[str], live: list[Any]) -> None:
        """An MCP pool's or HTTP service's instances by state, breakers and calls in flight."""
        for state, n in Counter(states).items():
            metrics.instances.labels(service, kind, state).set(n)
        for inst in live:
            breaker = getattr(inst.breaker.state, "value", str(inst.breaker.state))
            metrics.breaker_state.labels(service, inst.id).set(BREAKER_VALUES.get(breaker, 0))
        metrics.in_flight.labels(service).set(sum(i.in_flight for i in live))

    async def collect() -> None:
        """Read the gauges of state from their owners (at scrape time only)."""
        metrics.instances.clear()
        metrics.breaker_state.clear()
        metrics.in_flight.clear()
        for pool in router.supervisor.pools.values():
            live = [s.instance for s in pool.slots if s.instance is not None]
            states = [slot.state.value for slot in pool.slots]
            instance_gauges(pool.name, "mcp", states, [*live, *pool.dedicated.values()])
        if router.services is not None:
            for name, service in router.services.pools.items():
                members = list(service.instances.values())
                instance_gauges(name, "http", [i.state.value for i in members], members)
        registry = registry_status()
        metrics.registry_up.clear()
        metrics.registry_up.labels(registry.get("backend", "")).set(
            1 if registry.get("status", "ok") == "ok" else 0
        )
        queue = await queue_status()
        metrics.queue_up.clear()
        metrics.queue_up.labels(queue.get("backend", "")).set(0 if queue.get("error") else 1)
        metrics.tasks.clear()
        for status, n in (queue.get("tasks") or {}).items():
            metrics.tasks.labels(status).set(n)
        metrics.tasks_running_here.set(queue.get("running_here", 0))
        metrics.sessions.set(sessions())

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        include_in_schema=False,
        dependencies=[requires("discover")],
    )
    async def metrics_endpoint() -> Response:
        await collect()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/livez", summary="Liveness: the process answers")
    async def livez() -> Response:
        return json_response({"status": "live"})

    @api.get(
        "/readyz",
        summary="Readiness: started and accepting calls (503 otherwise)",
        responses={503: ok("Starting or draining")},
    )
    async def readyz() -> Response:
        if not started():
            return json_response({"status": "starting"}, 503)
        if not router.accepting:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ready"})

    @api.get(
        "/api/v1/mesh/v2/traces",
        summary="The most recent traces, newest first",
        dependencies=[requires("discover")],
        responses=problems(422),
    )
    async def traces(limit: int = 50) -> Response:
        if not 1 <= limit <= 1000:
            raise InvalidArguments("limit must be between 1 and 1000")
        recent = tracing.recent
        items = recent.traces(limit) if recent is not None else []
        return json_response({"tracing": recent is not None, "items": items})

    @api.get(
        "/api/v1/mesh/v2/traces/{trace_id}",
        summary="One recent trace, with its spans",
        dependencies=[requires("discover")],
        responses=problems(404),
    )
    async def one_trace(trace_id: str) -> Response:
        recent = tracing.recent
        found = recent.trace(trace_id) if recent is not None else None
        if found is None:
            raise NotFound(f"no recent trace {trace_id!r} (tracing off, unsampled, or dropped)")
        return json_response(found)

    return api
