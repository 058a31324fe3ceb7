"""The mesh API (`/api/v1/mesh/v2`): health, registration and discovery of services."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from meshgate.api.auth import requires
from meshgate.api.forwarding import forward_path
from meshgate.api.openapi import header_parameters, json_body, ok, problems
from meshgate.api.problems import DEFAULT_MAX_JSON_DEPTH, read_json_object
from meshgate.api.proxying import HttpProxy
from meshgate.api.redaction import for_caller
from meshgate.api.responses import json_response
from meshgate.api.routing import DirectRoute
from meshgate.config import Registration
from meshgate.errors import (
    InvalidArguments,
    MeshgateError,
    NotFound,
    UnknownService,
)
from meshgate.observability.audit import audit
from meshgate.observability.topology import dot, mermaid
from meshgate.registry.base import Registry
from meshgate.router import Router
from meshgate.router.call import CALLER_HEADER, HOPS_HEADER, SESSION_HEADER, TIMEOUT_HEADER
from meshgate.router.cluster import NODE_KIND
from meshgate.security import principal_of
from meshgate.security.policy import Action
from meshgate.services.mesh import ServiceMesh
from meshgate.urls import redact_url


def build(
    router: Router,
    registry: Registry,
    services: ServiceMesh,
    *,
    node: str,
    max_body_bytes: int,
    max_hops: int = 8,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    trusted_proxies: Sequence[str] = (),
    queue_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["mesh"])
    proxy = HttpProxy(
        router,
        services,
        max_body_bytes=max_body_bytes,
        max_hops=max_hops,
        trusted_proxies=trusted_proxies,
    )

    def mcp_view(name: str) -> dict[str, Any]:
        view = router.supervisor.pools[name].view()
        return {**view, "kind": "mcp"}

    def http_view(name: str) -> dict[str, Any]:
        pool = services.pools.get(name)
        instances = sorted(pool.instances.values(), key=lambda i: i.id) if pool else []
        states = {i.state.value for i in instances}
        state = next((s for s in ("healthy", "starting", "unhealthy") if s in states), "stopped")
        return {
            "name": name,
            "kind": "http",
            "state": state,
            "instances": [i.view() for i in instances],
        }

    def remote(views: dict[str, dict[str, Any]], only: str | None = None) -> None:
        """Add the instances other nodes registered (a shared registry backend) that
        `http_view` did not show: their HTTP instances are pooled here and shown there."""
        for r in registry.instances(only):
            if r.node == node or r.kind == NODE_KIND or f"{r.node}/{r.id}" in services.remote:
                continue
            view = views.setdefault(
                r.service,
                {"name": r.service, "kind": r.kind, "state": "stopped", "instances": []},
            )
            view["instances"].append(
                {
                    "id": r.id,
                    "node": r.node,
                    "kind": r.kind,
                    "state": r.state.value,
                    "url": redact_url(r.address) if r.address else r.address,
                    "tags": r.metadata.get("tags", []),
                    "remote": True,
                }
            )
            if r.state.value == "healthy":
                view["state"] = "healthy"
            elif view["state"] == "stopped":
                view["state"] = r.state.value

    def all_views() -> dict[str, dict[str, Any]]:
        views = {name: mcp_view(name) for name in router.supervisor.pools}
        for name in services.pools:
            views.setdefault(name, http_view(name))
        remote(views)
        return views

    @api.post(
        "/register",
        summary="Register an HTTP service instance (idempotent); 201 new, 200 unchanged",
        status_code=201,
        responses={200: ok("Registered before, unchanged"), **problems(400, 413, 422)},
        openapi_extra=json_body(Registration),
    )
    async def register(request: Request) -> Response:
        body = await read_json_object(request, max_body_bytes, max_json_depth)
        try:
            reg = Registration.model_validate(body)
        except ValidationError as e:
            errors = [
                {"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in e.errors()
            ]
            raise InvalidArguments("invalid registration", extra={"errors": errors}) from None
        who = principal_of(request.scope).name
        await router.gate.admit(principal_of(request.scope), Action.mesh("register", reg.name))
        where = {"service": reg.name, "instance": reg.instance_id, "url": reg.base_url}
        try:
            if reg.name in router.supervisor.pools:
                raise InvalidArguments(f"{reg.name!r} is an MCP server of this gateway")
            if reg.instance_id in services.static:
                raise InvalidArguments(f"{reg.instance_id!r} is defined in meshgate.toml")
            server = request.scope.get("server")
            await services.check(reg, own_port=server[1] if server else None)
            inst, created = services.register(reg)
        except MeshgateError as e:
            audit("register", principal=who, outcome="refused", reason=e.detail, **where)
            raise
        audit("register", principal=who, outcome="ok", created=created, **where)
        return json_response(inst.view(), 201 if created else 200)

    @api.delete(
        "/services/{name}/instances/{instance_id}",
        summary="Deregister an HTTP service instance",
        status_code=204,
        responses=problems(404, 422),
    )
    async def deregister(request: Request, name: str, instance_id: str) -> Response:
        await router.gate.admit(principal_of(request.scope), Action.mesh("deregister", name))
        who = principal_of(request.scope).name
        where = {"service": name, "instance": instance_id}
        if instance_id in services.static:
            audit("deregister", principal=who, outcome="refused", reason="static", **where)
            raise InvalidArguments(
                f"{instance_id!r} is defined in meshgate.toml ([[mesh.services]]); remove it there"
            )
        if not services.deregister(name, instance_id):
            audit("deregister", principal=who, outcome="not_found", **where)
            raise NotFound(f"no instance {instance_id!r} of service {name!r}")
        audit("deregister", principal=who, outcome="ok", **where)
        return Response(status_code=204)

    @api.put(
        "/services/{name}/instances/{instance_id}/heartbeat",
        summary="Renew the TTL of an HTTP service instance",
        responses=problems(404),
    )
    async def heartbeat(request: Request, name: str, instance_id: str) -> Response:
        await router.gate.admit(principal_of(request.scope), Action.mesh("register", name))
        inst = services.heartbeat(name, instance_id)
        if inst is None:
            raise NotFound(
                f"no instance {instance_id!r} of service {name!r} (expired? register again)"
            )
        return json_response(inst.view())

    @api.get(
        "/services",
        summary="Services, MCP and HTTP, with filters and pagination",
        dependencies=[requires("discover")],
        responses=problems(422),
    )
    async def list_services(
        request: Request,
        kind: str | None = None,
        tag: str | None = None,
        state: str | None = None,
        prefix: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Response:
        if kind not in (None, "mcp", "http"):
            raise InvalidArguments("kind must be mcp or http")
        if not 1 <= limit <= 1000:
            raise InvalidArguments("limit must be between 1 and 1000")
        after = _decode_cursor(cursor) if cursor else ""
        items = []
        for name, view in sorted(all_views().items()):
            if name <= after:
                continue
            if kind and view["kind"] != kind:
                continue
            if prefix and not name.startswith(prefix):
                continue
            if state and view["state"] != state:
                continue
            if tag and not any(tag in (i.get("tags") or []) for i in view["instances"]):
                continue
            items.append(view)
            if len(items) > limit:
                break
        more = len(items) > limit
        items = items[:limit]
        next_cursor = _encode_cursor(items[-1]["name"]) if more else None
        return json_response(for_caller(request, {"items": items, "next_cursor": next_cursor}))

    async def call(request: Request, name: str, path: str) -> Response:
        # Checked on the raw path: Starlette has decoded `path`, so `%2e%2e` is `..` there.
        target = forward_path(request.scope.get("raw_path") or path.encode(), path)
        return await proxy.forward(request, name, target)

    # DirectRoute: FastAPI's per-request dependency resolution skipped (the handler reads
    # what it needs from the request itself).
    api.add_api_route(
        "/call/{name}/{path:path}",
        call,
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        summary="Call an HTTP service through the router (balanced, broken, retried if safe)",
        response_class=Response,
        responses={
            # Whatever the service answers (any status, any media type or none), as it is.
            200: {"description": "The service's own response"},
            "default": {"description": "The service's own response"},
            **problems(400, 404, 413, 502, 503, 504, 508),
        },
        openapi_extra=header_parameters(
            {
                TIMEOUT_HEADER: ("Seconds the call may take", {"type": "number", "minimum": 0.001}),
                HOPS_HEADER: ("Gateways the call has passed through", {"type": "integer"}),
                CALLER_HEADER: ("The calling service, for the topology", {"type": "string"}),
                SESSION_HEADER: ("A session key for consistent hashing", {"type": "string"}),
            }
        ),
        route_class_override=DirectRoute,
    )

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
        views = all_views()
        declared = {
            (i.service, dep) for i in services.instances.values() for dep in i.reg.depends_on
        }
        status: dict[str, str] = {}
        for name, view in views.items():
            if view["state"] != "healthy":
                status[name] = "down"
            elif any(
                src == name and views.get(dst, {}).get("state") != "healthy"
                for src, dst in declared
            ):
                status[name] = "degraded"  # a dependency is down or unknown
            else:
                status[name] = "ok"
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
        body = {
            "services": [
                {
                    "name": name,
                    "kind": view["kind"],
                    "state": view["state"],
                    "status": status[name],
                    "instances": len(view["instances"]),
                    "healthy": sum(i["state"] == "healthy" for i in view["instances"]),
                    "depends_on": sorted(dst for src, dst in declared if src == name),
                }
                for name, view in sorted(views.items())
            ],
            "edges": edges,
        }
        return json_response(body)

    @api.get(
        "/services/{name}",
        summary="One service with its instances",
        dependencies=[requires("discover")],
        responses=problems(404),
    )
    async def get_service(request: Request, name: str) -> Response:
        views: dict[str, dict[str, Any]] = {}
        if name in router.supervisor.pools:
            views[name] = mcp_view(name)
        elif name in services.pools:
            views[name] = http_view(name)
        remote(views, name)
        if name not in views:
            raise UnknownService(f"no service named {name!r}")
        return json_response(for_caller(request, views[name]))

    services_mesh = services

    @api.get(
        "/nodes",
        summary="The nodes of the cluster: this one first, then each with a live record",
        dependencies=[requires("discover")],
    )
    async def nodes(request: Request) -> Response:
        items = router.cluster.nodes() if router.cluster is not None else []
        return json_response(for_caller(request, {"items": items, "next_cursor": None}))

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
        for name, service_pool in services_mesh.pools.items():
            instances = list(service_pool.instances.values())
            counts = Counter(i.state.value for i in instances)
            summary[name] = {
                "kind": "http",
                "state": http_view(name)["state"],
                "instances": dict(counts),
                "healthy": counts.get("healthy", 0),
                "desired": len(instances),
            }
        degraded = any(s["healthy"] < s["desired"] for s in summary.values())
        down = any(s["healthy"] == 0 and s["desired"] > 0 for s in summary.values())
        status = "down" if down else "degraded" if degraded else "ok"
        if not router.accepting:
            status = "draining"
        body = {
            "status": status,
            "node": node,
            "registry": {
                **registry.status(),
                **services_mesh.store.status(),
                "transitions": {
                    f"{a}->{b}": n for (a, b), n in sorted(services_mesh.transitions.items())
                },
            },
            "in_flight": router.in_flight,
            "nodes": router.cluster.nodes() if router.cluster is not None else [],
            "queue": await queue_status() if queue_status is not None else None,
            "services": summary,
        }
        return json_response(for_caller(request, body))

    return api


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArguments("cursor is not one this API gave out") from None
