"""The edge route table: requests matched by Host, path prefix and method to an HTTP service
(`[[routes]]`), as an API gateway's proxy port routes them, and passed on through the same
proxy as `/api/v1/mesh/v2/call/` (`api.proxying`).

Matching follows Kong's traditional router, compiled once: routes are ranked first by how many
of hosts and methods they set, then plain hosts before wildcard ones, then the longest path
prefix; among equals the first declared wins. A request's candidates are found by dictionary
lookups (its host, each suffix of it for wildcards, each prefix length in use), never by
scanning every route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api import problems
from meshgate.api.forwarding import climbs
from meshgate.api.guard import bare_host
from meshgate.api.proxying import HttpProxy
from meshgate.config.routes import EdgeSettings, RouteSettings, reserved
from meshgate.errors import InvalidInput, NotFound

MATCH = "meshgate.edge"  # scope key: the route and prefix a request matched


@dataclass(frozen=True)
class Matched:
    """What a request matched: its route and the path prefix (`""` for a route without
    paths)."""

    route: RouteSettings
    prefix: str


@dataclass
class _Prefixes:
    """The path prefixes of one class of routes for one host key, longest first."""

    by_prefix: dict[str, list[tuple[int, RouteSettings]]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    def add(self, order: int, prefix: str, route: RouteSettings) -> None:
        self.by_prefix.setdefault(prefix, []).append((order, route))
        if len(prefix) not in self.lengths:
            self.lengths.append(len(prefix))
            self.lengths.sort(reverse=True)

    def find(self, path: str, method: str) -> tuple[int, int, Matched] | None:
        """(prefix length, declaration order, match) of the longest prefix of `path` with a
        route that takes `method`."""
        for length in self.lengths:
            if length > len(path):
                continue
            prefix = path[:length]
            for order, route in self.by_prefix.get(prefix, ()):
                if not route.methods or method in route.methods:
                    return length, order, Matched(route, prefix)
        return None


# A route's class: (its priority points: hosts set, methods set; whether its hosts are
# wildcards), best first, as Kong's traditional router ranks them.
_CLASSES = ((2, False), (2, True), (1, False), (1, True), (0, False))


class RouteTable:
    """The compiled `[[routes]]`: `match(host, method, path)` finds the route a request takes."""

    def __init__(self, routes: Sequence[RouteSettings]) -> None:
        self.routes = tuple(routes)
        # Per class: exact host ("" for routes without hosts) or wildcard suffix -> prefixes.
        self._exact: list[dict[str, _Prefixes]] = [{} for _ in _CLASSES]
        self._wild: list[dict[str, _Prefixes]] = [{} for _ in _CLASSES]
        self._ports = False  # whether any route host names a port
        for order, route in enumerate(self.routes):
            points = bool(route.hosts) + bool(route.methods)
            for host in route.hosts or ("",):
                wild = host.startswith("*.")
                rank = _CLASSES.index((points, wild))
                table = self._wild[rank] if wild else self._exact[rank]
                key = host[1:] if wild else host  # "*.example.com" -> ".example.com"
                self._ports |= ":" in key
                prefixes = table.setdefault(key, _Prefixes())
                for path in route.paths or ("",):
                    prefixes.add(order, path, route)

    def match(self, host: str, method: str, path: str) -> Matched | None:
        """The route for a request: `host` is its Host header as sent (port and case as they
        come), `path` its decoded path."""
        name = bare_host(host) if host else ""
        keys = [name]
        if self._ports and ":" in host and not host.startswith("["):
            keys.append(host.strip().lower())
        suffixes = [name[i:] for i, c in enumerate(name) if c == "."] if name else []
        for rank in range(len(_CLASSES)):
            best: tuple[int, int, Matched] | None = None
            candidates: list[_Prefixes] = []
            exact, wild = self._exact[rank], self._wild[rank]
            if exact:
                candidates += [exact[k] for k in (*keys, "") if k in exact]
            if wild:
                candidates += [wild[s] for s in suffixes if s in wild]
            for prefixes in candidates:
                found = prefixes.find(path, method)
                # Longest prefix first; among equal prefixes, the route declared first.
                if found is not None and (
                    best is None or (found[0], -found[1]) > (best[0], -best[1])
                ):
                    best = found
            if best is not None:
                return best[2]
        return None


def _raw_rest(raw: str, prefix: str) -> str:
    """The part of the raw (percent-encoded) path after the part that decodes to `prefix`."""
    want = len(prefix.encode())  # `raw` holds one character per byte (latin-1)
    if "%" not in raw:
        return raw[want:]
    i = size = 0
    while size < want and i < len(raw):
        escape = raw[i + 1 : i + 3]
        step = 3 if raw[i] == "%" and len(escape) == 2 and _is_hex(escape) else 1
        i += step
        size += 1
    if unquote_to_bytes(raw[:i]) != prefix.encode():
        raise InvalidInput("the request path cannot be split into route prefix and path")
    return raw[i:]


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def upstream_path(scope: Scope, matched: Matched) -> tuple[str, str]:
    """(the path to send the service, the prefix taken off it or ""): the client's raw path,
    less the matched prefix when the route strips it, escapes kept as sent. Refused (400) when
    it could climb out of the service's base path."""
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    raw = raw.split("?", 1)[0]
    stripped = matched.route.strip_path and matched.prefix not in ("", "/")
    rest = _raw_rest(raw, matched.prefix) if stripped else raw
    if ("." in rest or "%" in rest or "\\" in rest) and climbs(rest):
        raise InvalidInput(
            "the path has a '.' or '..' segment (literal, percent-encoded or after a "
            "backslash); it could leave the service's base path, so it is refused"
        )
    # As Kong's `path_handling = v0`: the parts are joined as segments, one slash between.
    target = rest if rest.startswith("/") else "/" + rest
    return target, matched.prefix.rstrip("/") if stripped else ""


@dataclass(frozen=True)
class _Label:
    path: str


class EdgeRoute(BaseRoute):
    """The route table as one Starlette route. On the main port (`everything = False`) it
    claims only requests that no earlier route took, that a route matches and that are not
    under one of meshgate's own paths; on the edge's own port every request is its own (an
    unmatched one answers 404)."""

    def __init__(self, table: RouteTable, proxy: HttpProxy, *, everything: bool) -> None:
        self.table = table
        self.proxy = proxy
        self.everything = everything
        # What the request's span is named by (`tracing`): the route, never the path.
        self.labels = {id(r): _Label(f"[[routes]] {r.describe()}") for r in table.routes}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path: str = scope["path"]
        if not self.everything and reserved(path) is not None:
            return Match.NONE, {}
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        found = self.table.match(host, scope["method"], path)
        if found is None and not self.everything:
            return Match.NONE, {}
        child: Scope = {MATCH: found}
        if found is not None:
            child["route"] = self.labels[id(found.route)]
        return Match.FULL, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched: Matched | None = scope.get(MATCH)
        if matched is None:
            raise NotFound(f"no route matches {scope['method']} {scope['path']}")
        target, prefix = upstream_path(scope, matched)
        response = await self.proxy.forward(
            Request(scope, receive),
            matched.route.service,
            target,
            preserve_host=matched.route.preserve_host,
            extra=[("x-forwarded-prefix", prefix)] if prefix else (),
        )
        await response(scope, receive, send)


def edge_app(route: EdgeRoute) -> FastAPI:
    """The application of the edge's own port: the route table alone, errors as problems.
    (Authentication, tracing and trusted forwarding are put around it by the caller, as on
    the main application.)"""
    # No redirect to the path with a slash added: Kong answers 404 there.
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    problems.install(app)
    app.router.routes.append(route)
    return app


class EdgePort:
    """ASGI middleware, outermost on the main application: a request that came in on the
    edge's own port goes to the edge's application instead."""

    def __init__(self, app: ASGIApp, *, edge: ASGIApp, port: int) -> None:
        self.app = app
        self.edge = edge
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] == self.port:
            await self.edge(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def route_hosts(settings: EdgeSettings) -> tuple[frozenset[str], tuple[str, ...]]:
    """(the exact host names, the wildcard suffixes such as `.example.com`) the routes name:
    the main port answers them too."""
    hosts = {h for r in settings.routes for h in r.hosts}
    exact = frozenset(bare_host(h) for h in hosts if not h.startswith("*."))
    return exact, tuple(sorted(h[1:] for h in hosts if h.startswith("*.")))
