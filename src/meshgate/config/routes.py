"""The shapes of the edge route table: `[[routes]]` (host and path prefix to an HTTP service, as
an API gateway's proxy port routes) and `[edge]` (where the table is served). `api.edge`
compiles and serves them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# meshgate's own paths, with everything under them: a route never takes them over on the main
# port (`/v1` is the Consul-compatible API, `/ui` the dashboard, `/health` kept for both).
RESERVED_PATHS = (
    "/api",
    "/mcp",
    "/sse",
    "/messages",
    "/health",
    "/livez",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/v1",
    "/ui",
    "/.well-known",
)

# As `settings.SERVICE_NAME` (settings imports this module, so it cannot be imported here).
_SERVICE = r"^[A-Za-z0-9_.-]{1,64}$"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?$")
_METHOD = re.compile(r"^[A-Z]{1,20}$")


def reserved(path: str) -> str | None:
    """The meshgate path a request or route path is, or lies under; None when it is neither."""
    for own in RESERVED_PATHS:
        if path == own or path.startswith(own + "/"):
            return own
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteSettings(_Model):
    """`[[routes]]`: requests whose Host, path and method match go to an HTTP service.

    A route matches when each field it sets matches: a host (exact, or `*.example.com` for any
    name under it; a `:port` only matches that port), a path prefix (by plain prefix, as Kong:
    `/foo` also matches `/foobar`; write `/foo/` to require the segment) and a method."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:~-]{1,128}$")
    service: str = Field(pattern=_SERVICE)
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    """Path prefixes; none: every path."""
    methods: tuple[str, ...] = ()
    """Request methods; none: every method."""
    strip_path: bool = True
    """Send the service the path less the matched prefix (`/svc/a` as `/a`)."""
    preserve_host: bool = False
    """Send the service the client's Host header instead of the instance's own."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for host in value:
            h = host.strip().lower().rstrip(".")
            if not _HOST.match(h):
                raise ValueError(
                    f"{host!r} is not a host name; expected a name such as api.example.com, "
                    "a leading wildcard such as *.example.com, optionally with :PORT"
                )
            if h.startswith("*.") and ":" in h:
                raise ValueError(f"{host!r}: a wildcard host cannot name a port")
            out.append(h)
        return tuple(out)

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if path.startswith("~"):
                raise ValueError(
                    f"{path!r}: regular-expression paths are not supported; give path prefixes"
                )
            if not path.startswith("/"):
                raise ValueError(f"{path!r}: a path prefix starts with '/'")
            if any(c in path for c in "?#") or any(ord(c) < 33 for c in path):
                raise ValueError(f"{path!r}: a path prefix has no query, fragment or space")
            if any(seg in (".", "..") for seg in path.split("/")):
                raise ValueError(f"{path!r}: a path prefix has no '.' or '..' segment")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            value = tuple(m.upper() if isinstance(m, str) else m for m in value)
            for m in value:
                if not isinstance(m, str) or not _METHOD.match(m):
                    raise ValueError(f"{m!r} is not a request method")
        return value

    @model_validator(mode="after")
    def _matches_something(self) -> RouteSettings:
        if not (self.hosts or self.paths or self.methods):
            raise ValueError(
                "a route sets at least one of hosts, paths or methods (a catch-all is "
                'paths = ["/"])'
            )
        return self

    def describe(self) -> str:
        return self.name or f"to {self.service}"


class EdgeListener(_Model):
    """`[edge]`: where the route table is served besides the main port."""

    port: int | None = Field(None, ge=0, le=65535)
    """A port of its own for the route table (Kong's proxy port was 8000); every path there is
    the table's. 0: one the OS chooses (logged). None: the main port only."""
    host: str | None = None
    """The address of that port; default: the main `host`."""
    on_main_port: bool = True
    """Also serve the table on the main port, for requests none of meshgate's own paths
    claim. Off (with `port` set): routes may then use meshgate's paths, such as `/api`."""

    @model_validator(mode="after")
    def _somewhere(self) -> EdgeListener:
        if not self.on_main_port and self.port is None:
            raise ValueError("on_main_port = false needs a port of its own: set port")
        return self


class EdgeSettings(_Model):
    """The route table and where it is served (`[[routes]]` and `[edge]` together)."""

    edge: EdgeListener = EdgeListener()
    routes: tuple[RouteSettings, ...] = ()

    @model_validator(mode="after")
    def _not_shadowing(self) -> EdgeSettings:
        if not self.edge.on_main_port:
            return self
        for n, route in enumerate(self.routes):
            for path in route.paths:
                own = reserved(path.rstrip("/") or "/")
                if own is not None:
                    raise ValueError(
                        f"routes.{n} ({route.describe()}): path {path!r} would shadow "
                        f"meshgate's own {own}; choose another prefix, or serve the routes on "
                        "a port of their own ([edge] port = 8000, on_main_port = false)"
                    )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.routes)
