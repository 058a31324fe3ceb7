"""`McpEntry`: the MCP endpoints reached without the framework's inner layers.

Every request to `/mcp` and `/mcp/{name}` passes the gateway's own layers (the Host and
Origin guard, authentication, tracing) like any other; past them, FastAPI would still wrap it
in its exception middleware and exit stack and match it against every route. This layer,
innermost of the gateway's, hands those two paths to the MCP app directly and everything
else on.
"""

from __future__ import annotations

from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api.mcp_http.transport import McpHttp

PREFIX = "/mcp/"


def mcp_routes(mcp: McpHttp) -> tuple[Route, Route]:
    """`/mcp` and `/mcp/{name}`: for McpEntry, and for the route table (what routing does
    around them, such as redirecting `/mcp/`)."""
    return (
        Route("/mcp", mcp, methods=None, include_in_schema=False),
        Route("/mcp/{name}", mcp, methods=None, include_in_schema=False),
    )


class McpEntry:
    """ASGI middleware: `/mcp` and `/mcp/{name}` go straight to `McpHttp`."""

    def __init__(self, app: ASGIApp, mcp: McpHttp, every: Route, one: Route) -> None:
        self.app = app
        self.mcp = mcp
        # What the framework's routing would have left in the scope: tracing names its span
        # after the route's path.
        self.every = every
        self.one = one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/mcp":
                scope["route"] = self.every
                scope["path_params"] = {}
                await self.mcp(scope, receive, send)
                return
            if path.startswith(PREFIX) and len(path) > len(PREFIX) and "/" not in path[5:]:
                scope["route"] = self.one
                scope["path_params"] = {"name": path[5:]}
                await self.mcp(scope, receive, send)
                return
        await self.app(scope, receive, send)
