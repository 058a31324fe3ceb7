"""meshgate as Kong's declarative configuration (`_format_version: "3.0"`), for sites that keep
Kong at the edge: one Kong upstream whose targets are the meshgate gateway nodes, checked on
`/readyz`; per HTTP service a Kong service sending `/NAME/...` to meshgate's
`/api/v1/mesh/v2/call/NAME/...`, and per MCP server one sending `/mcp/NAME` to meshgate's own
`/mcp/NAME`. Pure: names and node URLs in, YAML text out (`meshgate import kong` reads it back).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshgate.errors import ConfigError

UPSTREAM = "meshgate"
"""The Kong upstream every exported service goes through: the gateway nodes."""
CALL_PATH = "/api/v1/mesh/v2/call"
READY_PATH = "/readyz"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Kong's active check: every 5 s; two failures in a row take a node out, one success puts it
# back (a node that answers /readyz 503 is draining or starting).
_CHECK_INTERVAL_S = 5
_CHECK_FAILURES = 2


class ExportError(ConfigError):
    """What cannot be exported: a node URL or name Kong could not take."""


@dataclass(frozen=True)
class Node:
    """One meshgate gateway, as a Kong target."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Node:
        """The node a gateway URL names (`http://host:port`); ExportError when it is not one."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ExportError(f"{url!r} has a bad port") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ExportError(f"{url!r} is not an http(s) URL with a host")
        return cls(scheme, parts.hostname, port or (443 if scheme == "https" else 80))

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _names(kind: str, names: Iterable[str]) -> list[str]:
    out = sorted(set(names))
    for name in out:
        if not _NAME.match(name):
            raise ExportError(f"{kind} name {name!r} is not 1 to 64 of A-Z a-z 0-9 _ . -")
    return out


def document(
    services: Iterable[str], servers: Iterable[str], nodes: Sequence[Node]
) -> dict[str, Any]:
    """The Kong declarative configuration, as data: HTTP `services` and MCP `servers` behind
    the gateway `nodes`."""
    if not nodes:
        raise ExportError("no gateway node to send Kong's requests to")
    schemes = {n.scheme for n in nodes}
    if len(schemes) > 1:
        raise ExportError("the gateway nodes mix http and https; Kong's upstream takes one")
    scheme = schemes.pop()
    targets = sorted({n.target for n in nodes})
    upstream = {
        "name": UPSTREAM,
        "algorithm": "round-robin",
        "healthchecks": {
            "active": {
                "type": scheme,
                "http_path": READY_PATH,
                "timeout": 1,
                "healthy": {
                    "interval": _CHECK_INTERVAL_S,
                    "successes": 1,
                    "http_statuses": [200],
                },
                "unhealthy": {
                    "interval": _CHECK_INTERVAL_S,
                    "http_failures": _CHECK_FAILURES,
                    "tcp_failures": _CHECK_FAILURES,
                    "timeouts": _CHECK_FAILURES,
                    "http_statuses": [500, 502, 503, 504],
                },
            },
        },
        "targets": [{"target": t, "weight": 100} for t in targets],
    }
    kong_services: list[dict[str, Any]] = []
    for name in _names("service", services):
        # The trailing slash: Kong joins `/NAME` to `.../call/NAME/`, the path meshgate's
        # `/call/{name}/{path}` takes (without it, `.../call/NAME` would be a 404).
        kong_services.append(
            _service(name, scheme, f"{CALL_PATH}/{name}/", f"/{name}", streamed=False)
        )
    for name in _names("MCP server", servers):
        kong_services.append(
            _service(f"mcp-{name}", scheme, f"/mcp/{name}", f"/mcp/{name}", streamed=True)
        )
    return {
        "_format_version": "3.0",
        "_comment": "Made by `meshgate export kong`: Kong sends each route through meshgate "
        f"(upstream {UPSTREAM!r}: the gateway nodes, checked on {READY_PATH}).",
        "upstreams": [upstream],
        "services": kong_services,
    }


def _service(name: str, scheme: str, path: str, prefix: str, *, streamed: bool) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "paths": [prefix],
        "strip_path": True,
        "preserve_host": False,
    }
    if streamed:
        # MCP answers with server-sent events: Kong must pass them on as they come.
        route["response_buffering"] = False
    return {
        "name": name,
        "protocol": scheme,
        "host": UPSTREAM,
        "port": 443 if scheme == "https" else 80,
        "path": path,
        # meshgate retries what is safe to retry itself; Kong retrying on top would multiply.
        "retries": 0,
        "routes": [route],
    }


def export(services: Iterable[str], servers: Iterable[str], node_urls: Sequence[str]) -> str:
    """The Kong declarative file (YAML) for these HTTP `services` and MCP `servers` behind the
    gateways at `node_urls`; ExportError when it cannot be made."""
    nodes = [Node.of(u) for u in node_urls]
    text: str = yaml.safe_dump(document(services, servers, nodes), sort_keys=False)
    return text


__all__ = ["CALL_PATH", "READY_PATH", "UPSTREAM", "ExportError", "Node", "document", "export"]
