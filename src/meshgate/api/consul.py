"""The Consul-compatible HTTP API (`/v1/...`): Consul's clients and Prometheus'
`consul_sd_configs` register, update and discover services in meshgate's own registry.

Served: the agent's service registration, deregistration and TTL check updates, its services
and checks, `/v1/agent/self`; the catalog's services, service, nodes and datacenters;
health's service and checks; status' leader and peers; blocking queries (`?index=N&wait=5s`)
on every catalog and health read. Anything else under `/v1/` answers 501 with a sentence
saying so. Writes go through the same registration policy and gate as
`POST /api/v1/mesh/v2/register`; reads need `mesh:discover` and list only the services the
caller may discover. Errors are Consul's plain text (api/problems.py).

How a Consul registration maps onto meshgate's is in api/consul_agent.py, how meshgate's
state reads as Consul's in api/consul_views.py, the blocking queries and the reaper in
api/consul_state.py. The routes are left out of /openapi.json: the API is Consul's, as
Consul documents it, and its errors are plain text rather than problems.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from meshgate import __version__
from meshgate.api.consul_agent import folded, read_definition
from meshgate.api.consul_state import ConsulApi, OwnPort
from meshgate.api.consul_views import (
    agent_service_json,
    catalog_service_json,
    check_json,
    node_id,
    node_json,
    serf_json,
    service_json,
)
from meshgate.api.problems import read_json_object
from meshgate.api.responses import json_response
from meshgate.errors import InvalidInput, MeshgateError, NotFound, RegistrationRefused
from meshgate.observability.audit import audit
from meshgate.security import principal_of
from meshgate.security.policy import Action

__all__ = ["ConsulApi", "OwnPort", "build"]


class NotServed(MeshgateError):
    """A Consul endpoint meshgate does not serve (KV, sessions, ACLs, Connect...)."""

    status = 501
    type = "not-implemented"
    title = "Not implemented"


def _tags_match(tags: list[str], wanted: list[str]) -> bool:
    return all(t in tags for t in wanted)


def _flag(request: Request, name: str) -> bool:
    """A Consul boolean query parameter: present (empty, 1, true) and not 0 or false."""
    value = request.query_params.get(name)
    return value is not None and value.lower() not in ("0", "false")


def build(state: ConsulApi) -> APIRouter:
    """The `/v1/...` routes over `state`."""
    api = APIRouter(prefix="/v1", include_in_schema=False)
    services = state.services
    router = state.router
    dc = state.settings.datacenter

    # -- agent ---------------------------------------------------------------------------------

    @api.get("/agent/self")
    async def agent_self(request: Request) -> Response:
        await state.admit_read(request)
        own = state.catalog.nodes()[0]
        config = {
            "Datacenter": dc,
            "NodeName": state.node,
            "NodeID": node_id(state.node),
            "Server": True,
            "Version": __version__,
            "Product": "meshgate",
        }
        member = {"Name": state.node, "Addr": own.address, "Port": own.port, "Status": 1}
        return json_response({"Config": config, "Member": member, "Meta": {}})

    @api.get("/agent/services")
    async def agent_services(request: Request) -> Response:
        await state.admit_read(request)
        entries = [e for e in state.visible(request) if e.local]
        return json_response({e.id: agent_service_json(e, dc) for e in entries})

    @api.get("/agent/service/{service_id}")
    async def agent_service(request: Request, service_id: str) -> Response:
        await state.admit_read(request)
        for e in state.visible(request):
            if e.local and e.id == service_id:
                return json_response(agent_service_json(e, dc))
        raise NotFound(f"unknown service ID: {service_id}")

    @api.get("/agent/checks")
    async def agent_checks(request: Request) -> Response:
        await state.admit_read(request)
        entries = [e for e in state.visible(request) if e.local]
        return json_response({e.check.id: check_json(e, 0) for e in entries})

    @api.put("/agent/service/register")
    async def register(request: Request) -> Response:
        body = await read_json_object(request, state.max_body_bytes, state.max_json_depth)
        client = request.scope.get("client")
        definition = read_definition(body, peer=client[0] if client else None)
        reg = definition.registration
        principal = principal_of(request.scope)
        await router.gate.admit(principal, Action.mesh("register", reg.name))
        where = {"service": reg.name, "instance": reg.instance_id, "url": reg.base_url}
        try:
            if reg.name in router.supervisor.pools:
                raise InvalidInput(f"Invalid service name: {reg.name!r} is an MCP server here")
            if reg.instance_id in services.static:
                raise InvalidInput(f"Invalid service ID: {reg.instance_id!r} is in meshgate.toml")
            server = request.scope.get("server")
            try:
                await services.check(reg, own_port=server[1] if server else None)
            except RegistrationRefused as e:
                raise InvalidInput(f"Invalid service address: {e.detail}") from None
            inst, created = services.register(reg)
        except MeshgateError as e:
            audit(
                "register",
                principal=principal.name,
                outcome="refused",
                reason=e.detail,
                api="consul",
                **where,
            )
            raise
        # A TTL check's Status holds for a new instance (a changed registration is one), not
        # for the same registration sent again: its last update stands.
        if definition.status is not None and reg.check.type == "ttl" and inst.reported is None:
            services.report(reg.name, inst.id, definition.status, "")
        audit(
            "register",
            principal=principal.name,
            outcome="ok",
            created=created,
            api="consul",
            **where,
        )
        return Response(status_code=200)

    @api.put("/agent/service/deregister/{service_id}")
    async def deregister(request: Request, service_id: str) -> Response:
        inst = services.instances.get(service_id)
        if inst is None:
            if service_id.startswith("mcp:") and service_id[4:] in router.supervisor.pools:
                raise InvalidInput(
                    f"Invalid service ID: {service_id!r} is an MCP server of this gateway "
                    "(remove it from .mcp.json)"
                )
            raise NotFound(
                f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not '
                "the service name."
            )
        principal = principal_of(request.scope)
        await router.gate.admit(principal, Action.mesh("deregister", inst.service))
        where = {"service": inst.service, "instance": service_id}
        if service_id in services.static:
            audit(
                "deregister",
                principal=principal.name,
                outcome="refused",
                reason="static",
                api="consul",
                **where,
            )
            raise InvalidInput(f"Invalid service ID: {service_id!r} is defined in meshgate.toml")
        services.deregister(inst.service, service_id)
        audit("deregister", principal=principal.name, outcome="ok", api="consul", **where)
        return Response(status_code=200)

    def _note(request: Request) -> str:
        return request.query_params.get("note", "")

    @api.put("/agent/check/pass/{check_id}")
    async def check_pass(request: Request, check_id: str) -> Response:
        return await state.update(request, check_id, "passing", _note(request))

    @api.put("/agent/check/warn/{check_id}")
    async def check_warn(request: Request, check_id: str) -> Response:
        return await state.update(request, check_id, "warning", _note(request))

    @api.put("/agent/check/fail/{check_id}")
    async def check_fail(request: Request, check_id: str) -> Response:
        return await state.update(request, check_id, "critical", _note(request))

    @api.put("/agent/check/update/{check_id}")
    async def check_update(request: Request, check_id: str) -> Response:
        body = folded(
            await read_json_object(request, state.max_body_bytes, state.max_json_depth),
            "check update",
        )
        status, output = body.get("status"), body.get("output") or ""
        if not isinstance(status, str) or not isinstance(output, str):
            raise InvalidInput("Invalid check update: Status and Output are strings")
        return await state.update(request, check_id, status, output)

    # -- catalog -------------------------------------------------------------------------------

    @api.get("/catalog/datacenters")
    async def datacenters(request: Request) -> Response:
        await state.admit_read(request)
        return json_response([dc])

    @api.get("/catalog/nodes")
    async def catalog_nodes(request: Request) -> Response:
        await state.admit_read(request)
        index = await state.query(request, None)
        return state.answer([node_json(n, dc, index) for n in state.catalog.nodes()], index)

    @api.get("/catalog/services")
    async def catalog_services(request: Request) -> Response:
        await state.admit_read(request)
        index = await state.query(request, None)
        tags: dict[str, set[str]] = {}
        for e in state.visible(request):
            tags.setdefault(e.name, set()).update(e.tags)
        return state.answer({name: sorted(t) for name, t in sorted(tags.items())}, index)

    @api.get("/catalog/service/{name}")
    async def catalog_service(request: Request, name: str) -> Response:
        await state.admit_read(request)
        index = await state.query(request, name)
        wanted = request.query_params.getlist("tag")
        nodes = {n.name: n for n in state.catalog.nodes()}
        body = [
            catalog_service_json(e, state.node_of(e, nodes), dc, index)
            for e in state.visible(request, name, nodes)
            if _tags_match(e.tags, wanted)
        ]
        return state.answer(body, index)

    # -- health --------------------------------------------------------------------------------

    @api.get("/health/service/{name}")
    async def health_service(request: Request, name: str) -> Response:
        await state.admit_read(request)
        index = await state.query(request, name)
        wanted = request.query_params.getlist("tag")
        only_passing = _flag(request, "passing")
        nodes = {n.name: n for n in state.catalog.nodes()}
        body = [
            {
                "Node": node_json(state.node_of(e, nodes), dc, index),
                "Service": service_json(e, index),
                "Checks": [serf_json(e.node, index), check_json(e, index)],
            }
            for e in state.visible(request, name, nodes)
            if _tags_match(e.tags, wanted) and (not only_passing or e.check.status == "passing")
        ]
        return state.answer(body, index)

    @api.get("/health/checks/{name}")
    async def health_checks(request: Request, name: str) -> Response:
        await state.admit_read(request)
        index = await state.query(request, name)
        body = [check_json(e, index) for e in state.visible(request, name)]
        return state.answer(body, index)

    # -- status --------------------------------------------------------------------------------

    @api.get("/status/leader")
    async def leader(request: Request) -> Response:
        # No leader is elected: every node answers alike. This one stands for the cluster.
        own = state.catalog.nodes()[0]
        return json_response(f"{own.address}:{own.port}")

    @api.get("/status/peers")
    async def peers(request: Request) -> Response:
        return json_response([f"{n.address}:{n.port}" for n in state.catalog.nodes()])

    async def not_served(request: Request, rest: str) -> Response:
        raise NotServed(
            f"meshgate's Consul-compatible API does not serve {request.method} /v1/{rest}: only "
            "the agent's services and TTL checks, the catalog, health and status (see "
            "meshgate's docs/api.md, 'Consul-compatible API')"
        )

    api.add_api_route(
        "/{rest:path}",
        not_served,
        methods=["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    return api
