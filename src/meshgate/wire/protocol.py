"""The MCP client side of the gateway: era discovery, handshake, health probes, catalogs.

Two protocol eras are alive at once (docs/architecture.md, "Protocol eras"). A new instance is asked
`server/discover` (2026-07-28, stateless); a server that does not know it gets the
`initialize` handshake (2024-11-05 .. 2025-11-25). The era decides the health probe:
`server/discover` or `ping`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from meshgate import __version__
from meshgate.wire.connection import McpConnection
from meshgate.wire.jsonrpc import INTERNAL_ERROR, JSON, JsonRpcError

STATELESS_VERSION = "2026-07-28"
HANDSHAKE_VERSION = "2025-11-25"
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

CLIENT_INFO = {"name": "meshgate", "version": __version__}
# What the gateway itself can answer when a server asks (roots/list, ping).
CLIENT_CAPABILITIES: JSON = {"roots": {"listChanged": False}}
MAX_PAGES = 100


class Era(str, Enum):
    STATELESS = "stateless"
    HANDSHAKE = "handshake"


@dataclass(frozen=True)
class ServerIdentity:
    """What discovery or the handshake told us about an instance."""

    era: Era
    protocol_version: str
    capabilities: JSON = field(default_factory=dict)
    server_info: JSON = field(default_factory=dict)
    instructions: str | None = None


def stateless_meta() -> JSON:
    return {
        META_VERSION: STATELESS_VERSION,
        META_CAPABILITIES: CLIENT_CAPABILITIES,
        META_CLIENT_INFO: CLIENT_INFO,
    }


async def discover(conn: McpConnection, *, timeout: float) -> ServerIdentity | None:
    """Ask `server/discover`; None when the server is of the handshake era."""
    try:
        res = await conn.request("server/discover", {"_meta": stateless_meta()}, timeout=timeout)
    except JsonRpcError:
        return None
    versions = res.get("supportedVersions")
    if not isinstance(versions, list) or STATELESS_VERSION not in versions:
        return None
    meta = res.get("_meta") if isinstance(res.get("_meta"), dict) else {}
    info = res.get("serverInfo") or (meta or {}).get(META_SERVER_INFO) or {}
    conn.meta = stateless_meta()
    return ServerIdentity(
        Era.STATELESS,
        STATELESS_VERSION,
        _obj(res.get("capabilities")),
        _obj(info),
        res.get("instructions") if isinstance(res.get("instructions"), str) else None,
    )


async def initialize(conn: McpConnection, *, timeout: float) -> ServerIdentity:
    """Perform the handshake-era `initialize` / `notifications/initialized` exchange."""
    res = await conn.request(
        "initialize",
        {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": CLIENT_CAPABILITIES,
            "clientInfo": CLIENT_INFO,
        },
        timeout=timeout,
    )
    version = res.get("protocolVersion")
    if not isinstance(version, str):
        raise JsonRpcError(INTERNAL_ERROR, "initialize result has no protocolVersion")
    conn.handshake = True
    conn.notify("notifications/initialized")
    return ServerIdentity(
        Era.HANDSHAKE,
        version,
        _obj(res.get("capabilities")),
        _obj(res.get("serverInfo")),
        res.get("instructions") if isinstance(res.get("instructions"), str) else None,
    )


async def establish(
    conn: McpConnection, *, timeout: float, era_hint: Era | None = None
) -> ServerIdentity:
    """Discover the server's era and complete whatever that era needs before use."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    if era_hint is not Era.HANDSHAKE:
        # Half the budget for discovery: a server that silently drops unknown methods before
        # its handshake must still leave time for the handshake.
        ident = await discover(conn, timeout=timeout / 2 if era_hint is None else timeout)
        if ident is not None:
            return ident
    return await initialize(conn, timeout=max(0.1, end - loop.time()))


async def probe(conn: McpConnection, era: Era, *, timeout: float) -> None:
    """A health check: `server/discover` for stateless servers, `ping` for handshake ones."""
    if era is Era.STATELESS:
        await conn.request("server/discover", {}, timeout=timeout, internal=True)
        return
    # An error answered in time is still an answer: the server reads and replies. Published
    # servers without a `ping` handler (extended-memory-mcp 0.9 answers -32603) would otherwise
    # stay unhealthy for good, neither callable nor restarted.
    with contextlib.suppress(JsonRpcError):
        await conn.request("ping", None, timeout=timeout, internal=True)


async def list_tools(conn: McpConnection, *, timeout: float) -> list[JSON]:
    """Every tool of the server, following `nextCursor` pagination."""
    tools: list[JSON] = []
    cursor: Any = None
    for _ in range(MAX_PAGES):
        res = await conn.request(
            "tools/list", {"cursor": cursor} if cursor else {}, timeout=timeout
        )
        page = res.get("tools")
        if not isinstance(page, list):
            raise JsonRpcError(INTERNAL_ERROR, "tools/list result has no tools list")
        tools.extend(t for t in page if isinstance(t, dict) and isinstance(t.get("name"), str))
        cursor = res.get("nextCursor")
        if not cursor:
            break
    return tools


def _obj(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}
