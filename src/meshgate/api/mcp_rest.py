"""MCP over REST: list servers and tools, call a tool through the router."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meshgate.api.auth import requires
from meshgate.api.openapi import header_parameters, problems
from meshgate.api.problems import DEFAULT_MAX_JSON_DEPTH, read_json_object
from meshgate.api.redaction import for_caller
from meshgate.api.responses import json_response
from meshgate.api.routing import DirectRoute, unless_disconnected
from meshgate.errors import InvalidArguments
from meshgate.router import Router, hash_key
from meshgate.router.call import CALLER_HEADER, SESSION_HEADER, Call
from meshgate.security import principal_of
from meshgate.security.policy import Action
from meshgate.upstream.supervisor import ServerPool

_CALL_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "arguments": {"type": "object", "description": "the tool's arguments"},
                        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                    },
                }
            }
        },
    }
}


def build(
    router: Router, *, max_body_bytes: int, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mcp", tags=["mcp"])

    def pool(name: str) -> ServerPool:
        return router.pool(name)

    def view(p: ServerPool) -> dict[str, Any]:
        """A server's view; in a cluster, with the instances other nodes run of it."""
        out = p.view()
        if router.cluster is not None and p.name in router.supervisor.pools:
            out["instances"] = [*out["instances"], *router.cluster.remote_instances(p.name)]
        return out

    @api.get(
        "/servers",
        summary="Every MCP server with its instances",
        dependencies=[requires("discover")],
    )
    async def list_servers(request: Request) -> Response:
        items = [view(p) for p in router.pools().values()]
        return json_response(for_caller(request, {"items": items, "next_cursor": None}))

    @api.get(
        "/servers/{name}",
        summary="One MCP server with its instances",
        dependencies=[requires("discover")],
        responses=problems(404),
    )
    async def get_server(request: Request, name: str) -> Response:
        return json_response(for_caller(request, view(pool(name))))

    @api.get(
        "/servers/{name}/tools",
        summary="The tools of one MCP server the caller may call",
        responses=problems(404),
    )
    async def list_tools(request: Request, name: str) -> Response:
        gate, principal = router.gate, principal_of(request.scope)
        may = [t for t in sorted(pool(name).tools) if gate.allows(principal, Action.tool(name, t))]
        if not may and not gate.allows(principal, Action.server(name)):
            await gate.admit(principal, Action.server(name))  # no right to it at all: 403
        p = pool(name)
        return json_response({"items": [p.tools[t] for t in may], "next_cursor": None})

    async def call_tool(request: Request, name: str, tool: str) -> Response:
        body = await read_json_object(request, max_body_bytes, max_json_depth)
        unknown = set(body) - {"arguments", "timeout_s"}
        if unknown:
            raise InvalidArguments(f"unknown field(s) in the body: {', '.join(sorted(unknown))}")
        arguments = body.get("arguments", {})
        if not isinstance(arguments, dict):
            raise InvalidArguments("'arguments' must be a JSON object")
        timeout_s = body.get("timeout_s")
        if timeout_s is not None and (
            not isinstance(timeout_s, int | float)
            or isinstance(timeout_s, bool)
            or not math.isfinite(timeout_s)
            or timeout_s <= 0
        ):
            raise InvalidArguments("'timeout_s' must be a positive number")
        call = Call(
            service=name,
            kind="mcp",
            target=tool,
            entry="rest",
            incoming=request.headers,
            caller=request.headers.get(CALLER_HEADER),
            arguments=arguments,
            timeout_s=timeout_s,
            principal=principal_of(request.scope),
        )
        await router.admit(call)
        key = hash_key(
            pool(name),
            session=request.headers.get(SESSION_HEADER),
            client=request.client.host if request.client else None,
            arguments=arguments,
        )
        result = router.call_tool(name, tool, arguments, call=call, key=key)
        return json_response(await unless_disconnected(request, result))

    api.add_api_route(
        "/servers/{name}/tools/{tool}",
        call_tool,
        methods=["POST"],
        summary="Call a tool; returns the MCP tools/call result",
        responses=problems(400, 404, 413, 422, 502, 503, 504, 508),
        openapi_extra={
            **_CALL_BODY,
            **header_parameters(
                {
                    CALLER_HEADER: ("The calling service, for the topology", {"type": "string"}),
                    SESSION_HEADER: ("A session key for consistent hashing", {"type": "string"}),
                }
            ),
        },
        route_class_override=DirectRoute,
    )
    return api
