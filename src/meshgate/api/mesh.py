"""The mesh API (`/api/v1/mesh/v2`): health, registration and discovery of services."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meshgate.api import old_shapes
from meshgate.api.auth import requires
from meshgate.api.forwarding import forward_path
from meshgate.api.mesh_views import MeshViews
from meshgate.api.node_relay import NodeRelay, Relayed
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
from meshgate.registry.base import InstanceRecord
from meshgate.router.call import CALLER_HEADER, HOPS_HEADER, SESSION_HEADER, TIMEOUT_HEADER
from meshgate.security import principal_of
from meshgate.security.policy import Action


def build(
    views: MeshViews,
    *,
    max_body_bytes: int,
    max_hops: int = 8,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    trusted_proxies: Sequence[str] = (),
    relay: NodeRelay | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["mesh"])
    router, services, all_views = views.router, views.services, views.all
    proxy = HttpProxy(
        router,
        services,
        max_body_bytes=max_body_bytes,
        max_hops=max_hops,
        trusted_proxies=trusted_proxies,
    )

    @api.post(
        "/register",
        summary="Register an HTTP service instance (idempotent); 201 new, 200 unchanged",
        status_code=201,
        responses={200: ok("Registered before, unchanged"), **problems(400, 413, 422, 503)},
        openapi_extra=json_body(Registration, old_shapes.OldRegistration),
    )
    async def register(request: Request) -> Response:
        body = await read_json_object(request, max_body_bytes, max_json_depth)
        old = old_shapes.is_old_registration(body)  # the older API's body: answered in its shape
        reg = (old_shapes.registration if old else _registration)(body)
        who = principal_of(request.scope).name
        await router.gate.admit(principal_of(request.scope), Action.mesh("register", reg.name))
        where = {"service": reg.name, "instance": reg.instance_id, "url": reg.base_url}
        owned = None
        if reg.instance_id not in services.instances:
            owned = owner_elsewhere(relay, request, reg.instance_id)
        if relay is not None and owned is not None:
            # One owner per instance id: the registration goes to the node that has it, so
            # a service re-registering through any node updates that node's registration.
            audit("register", principal=who, outcome="relayed", node=owned[0].node, **where)
            return Relayed(relay, request, owned[1], json.dumps(body).encode())
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
        if old:
            return json_response(old_shapes.registered(reg.name, inst.id))
        return json_response(inst.view(), 201 if created else 200)

    @api.delete(
        "/services/{name}/instances/{instance_id}",
        summary="Deregister an HTTP service instance",
        status_code=204,
        responses=problems(404, 422, 503),
    )
    async def deregister(request: Request, name: str, instance_id: str) -> Response:
        relayed = await remove_instance(request, views, name, instance_id, relay)
        return relayed or Response(status_code=204)

    @api.put(
        "/services/{name}/instances/{instance_id}/heartbeat",
        summary="Renew the TTL of an HTTP service instance",
        responses=problems(404, 503),
    )
    async def heartbeat(request: Request, name: str, instance_id: str) -> Response:
        await router.gate.admit(principal_of(request.scope), Action.mesh("register", name))
        inst = services.heartbeat(name, instance_id)
        if inst is None:
            owned = owner_elsewhere(relay, request, instance_id, name)
            if relay is not None and owned is not None:
                return Relayed(relay, request, owned[1])
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
        old = old_shapes.listed_instances(items)  # the older API's keys, of the same page
        page = {"items": items, "next_cursor": next_cursor, "count": len(old), "services": old}
        return json_response(for_caller(request, page))

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
        "/services/{name}",
        summary="One service with its instances",
        dependencies=[requires("discover")],
        responses=problems(404),
    )
    async def get_service(request: Request, name: str) -> Response:
        found = views.one(name)
        if found is None:
            raise UnknownService(f"no service named {name!r}")
        return json_response(for_caller(request, found))

    @api.get(
        "/nodes",
        summary="The nodes of the cluster: this one first, then each with a live record",
        dependencies=[requires("discover")],
    )
    async def nodes(request: Request) -> Response:
        items = router.cluster.nodes() if router.cluster is not None else []
        return json_response(for_caller(request, {"items": items, "next_cursor": None}))

    return api


def owner_elsewhere(
    relay: NodeRelay | None, request: Request, instance_id: str, service: str | None = None
) -> tuple[InstanceRecord, str] | None:
    """The record and node URL of another live node's HTTP instance `instance_id`, when a
    request for it may be relayed there (not one a peer relayed here)."""
    if relay is None or relay.relayed(request):
        return None
    return relay.cluster.instance_owner(instance_id, service)


async def remove_instance(
    request: Request,
    views: MeshViews,
    name: str,
    instance_id: str,
    relay: NodeRelay | None = None,
) -> Response | None:
    """Deregister an HTTP service instance, if the caller may; audited. One another live node
    owns is deregistered there: its answer, relayed, is returned."""
    router, services = views.router, views.services
    await router.gate.admit(principal_of(request.scope), Action.mesh("deregister", name))
    who = principal_of(request.scope).name
    where = {"service": name, "instance": instance_id}
    if instance_id in services.static:
        audit("deregister", principal=who, outcome="refused", reason="static", **where)
        raise InvalidArguments(
            f"{instance_id!r} is defined in meshgate.toml ([[mesh.services]]); remove it there"
        )
    if not services.deregister(name, instance_id):
        owned = owner_elsewhere(relay, request, instance_id, name)
        if relay is not None and owned is not None:
            audit("deregister", principal=who, outcome="relayed", node=owned[0].node, **where)
            return Relayed(relay, request, owned[1])
        audit("deregister", principal=who, outcome="not_found", **where)
        raise NotFound(f"no instance {instance_id!r} of service {name!r}")
    audit("deregister", principal=who, outcome="ok", **where)
    return None


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _registration(body: dict[str, Any]) -> Registration:
    return old_shapes.validated(Registration, body, "invalid registration")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArguments("cursor is not one this API gave out") from None
