"""The mesh's state (`/api/v1/mesh/v2/health`, `/topology`, `/stats`): one answer for every
client, with the keys of the older API of these paths beside meshgate's own (docs/api.md, "The
older mesh API"). Statuses use one vocabulary everywhere: `healthy`, `degraded`, `unhealthy`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meshgate.api.auth import requires
from meshgate.api.mesh_views import MeshViews, open_breakers
from meshgate.api.openapi import ok, problems
from meshgate.api.redaction import for_caller
from meshgate.api.responses import json_response
from meshgate.errors import InvalidArguments
from meshgate.observability.topology import dot, mermaid

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def build(
    views: MeshViews,
    *,
    queue_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    runtime_policy: Callable[[], dict[str, Any]] | None = None,
    kong_sync: Callable[[], dict[str, Any]] | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["mesh"])
    router, services = views.router, views.services

    @api.get(
        "/topology",
        summary="Services, their states and caller -> callee edges",
        dependencies=[requires("discover")],
        responses={
            200: ok(
                "The graph: JSON, Mermaid or DOT",
                "application/json",
                "text/plain",
                "text/vnd.graphviz",
            ),
            **problems(422),
        },
    )
    async def topology(format: str = "json") -> Response:
        found = views.all()
        declared = {
            (i.service, dep) for i in services.instances.values() for dep in i.reg.depends_on
        }
        status: dict[str, str] = {}
        for name, view in found.items():
            if view["state"] != "healthy":
                status[name] = UNHEALTHY
            elif any(
                src == name and found.get(dst, {}).get("state") != "healthy"
                for src, dst in declared
            ):
                status[name] = DEGRADED  # a dependency is down or unknown
            else:
                status[name] = HEALTHY
        edges: list[dict[str, Any]] = [
            {"from": src, "to": dst, "kind": "declared"} for src, dst in sorted(declared)
        ]
        for (src, dst), edge in sorted(router.edges.edges.items()):
            edges.append(
                {
                    "from": src,
                    "to": dst,
                    "kind": "observed",
                    "calls": edge.calls,
                    "errors": edge.errors,
                    "last_seen": edge.last_seen,
                }
            )
        triples = [(e["from"], e["to"], e["kind"]) for e in edges]
        nodes = {**{e["from"]: "caller" for e in edges}, **status}
        if format == "mermaid":
            return Response(mermaid(nodes, triples), media_type="text/plain")
        if format == "dot":
            return Response(dot(nodes, triples), media_type="text/vnd.graphviz")
        if format != "json":
            raise InvalidArguments("format must be json, mermaid or dot")
        listed = {
            name: {
                "name": name,
                "kind": view["kind"],
                "state": view["state"],
                "status": status[name],
                "instances": len(view["instances"]),
                "healthy": sum(i["state"] == "healthy" for i in view["instances"]),
                "depends_on": sorted(dst for src, dst in declared if src == name),
            }
            for name, view in sorted(found.items())
        }
        body = {
            "services": listed,
            "total_instances": sum(s["instances"] for s in listed.values()),
            "healthy_instances": sum(s["healthy"] for s in listed.values()),
            "circuit_breakers": views.breakers(),
            "edges": edges,
        }
        return json_response(body)

    @api.get(
        "/stats",
        summary="Calls, calls/s, error rate and latency per service over the last minutes",
        dependencies=[requires("discover")],
        responses=problems(422),
    )
    async def stats(window_s: int | None = None) -> Response:
        window = router.window
        wanted = window.span_s if window_s is None else window_s
        if not window.bucket_s <= wanted <= window.span_s:
            raise InvalidArguments(
                f"window_s must be between {window.bucket_s} and {window.span_s}",
                extra={"minimum": window.bucket_s, "maximum": window.span_s},
            )
        # Every service this node can route to is listed, with zeros when it had no call.
        names = [*router.pools(), *services.pools]
        return json_response(window.summary(wanted, names))

    @api.get("/health", summary="Mesh status: registry and per-service instance counts")
    async def health(request: Request) -> Response:
        summary: dict[str, dict[str, Any]] = {}
        for name, pool in router.supervisor.pools.items():
            counts = Counter(s.state.value for s in pool.slots)
            summary[name] = {
                "kind": "mcp",
                "state": pool.state.value,
                "instances": dict(counts),
                "healthy": counts.get("healthy", 0),
                "desired": pool.autoscaler.desired,  # 0 for a pool scaled to zero: not down
            }
        for name, service_pool in services.pools.items():
            instances = list(service_pool.instances.values())
            counts = Counter(i.state.value for i in instances)
            summary[name] = {
                "kind": "http",
                "state": views.http(name)["state"],
                "instances": dict(counts),
                "healthy": counts.get("healthy", 0),
                "desired": len(instances),
            }
        breakers = open_breakers(views.breakers())
        degraded = breakers > 0 or any(s["healthy"] < s["desired"] for s in summary.values())
        down = any(s["healthy"] == 0 and s["desired"] > 0 for s in summary.values())
        draining = not router.accepting
        status = UNHEALTHY if down or draining else DEGRADED if degraded else HEALTHY
        total = sum(sum(s["instances"].values()) for s in summary.values())
        healthy = sum(s["healthy"] for s in summary.values())
        body = {
            "status": status,
            "draining": draining,
            "health_score": round(healthy / total, 4) if total else 1.0,
            "total_services": len(summary),
            "total_instances": total,
            "healthy_instances": healthy,
            "open_circuit_breakers": breakers,
            "runtime_policy": runtime_policy() if runtime_policy is not None else {},
            "node": views.node,
            "registry": {
                **views.registry.status(),
                **services.store.status(),
                "transitions": {
                    f"{a}->{b}": n for (a, b), n in sorted(services.transitions.items())
                },
            },
            "in_flight": router.in_flight,
            "nodes": router.cluster.nodes() if router.cluster is not None else [],
            "queue": await queue_status() if queue_status is not None else None,
            "services": summary,
        }
        if kong_sync is not None:  # `[kong]`: how Kong's upstreams keep up with the registry
            body["kong_sync"] = kong_sync()
        return json_response(for_caller(request, body))

    return api
