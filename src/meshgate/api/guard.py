"""Cross-site and DNS-rebinding guards: which Host a request may name, which Origin may drive
the mesh, and that a state-changing REST body is JSON.

A web page the user visits can send requests to the gateway on loopback: a "simple" POST
(text/plain, no preflight) from any site, or, after rebinding its own name to 127.0.0.1, any
request at all. The browser marks the first with an Origin header and the second with its
own name in Host; both are refused here, before any route runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api.problems import CONSUL_PREFIX, problem_response
from meshgate.errors import HostNotAllowed, MeshgateError, OriginNotAllowed, UnsupportedMediaType

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REST_PREFIX = "/api/v1/"
# The HTTP proxy passes any content type through to the services behind it: only the Origin
# rule applies there.
PROXY_PREFIX = "/api/v1/mesh/v2/call/"


def bare_host(value: str) -> str:
    """A Host header or URL host without its port or IPv6 brackets, lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:  # name:port or v4:port; more colons is a bare IPv6 address
        return value.split(":", 1)[0]
    return value


def allowed_hosts(configured: Iterable[str] | None, bind_host: str) -> frozenset[str] | None:
    """The Host values to answer, without port; None answers any ("*")."""
    if configured is None:
        hosts = set(LOOPBACK_HOSTS)
        if bare_host(bind_host) not in _ANY_ADDRESS:
            hosts.add(bare_host(bind_host))
        return frozenset(hosts)
    hosts = {bare_host(h) for h in configured}
    return None if "*" in hosts else frozenset(hosts)


def origin_allowed(origin: str | None, allowed: frozenset[str] | set[str]) -> bool:
    """Whether a request with this Origin header may go on: none (not a browser, or same
    origin on a GET), a loopback origin, one listed, or any when "*" is listed."""
    if origin is None or origin in allowed or "*" in allowed:
        return True
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return host is not None and host.lower() in LOOPBACK_HOSTS


def origin_refusal(origin: str) -> OriginNotAllowed:
    return OriginNotAllowed(
        f"origin {origin!r} is not allowed; add it to mesh.allowed_origins to permit it"
    )


def _is_json(content_type: bytes | None) -> bool:
    return (
        content_type is not None
        and content_type.split(b";", 1)[0].strip().lower() == b"application/json"
    )


class RequestGuard:
    """ASGI middleware, outermost, on every route: the Host check (421 unless allowed), and
    for state-changing REST requests the Origin check (403; the gateway's own origin passes)
    and a JSON body (415); the Consul-compatible API's writes get the Origin check only. One
    pass over the raw headers and a set lookup: cheap on the call paths."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: frozenset[str] | None,
        origins: Iterable[str] = (),
        suffixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(origins)
        self.suffixes = suffixes  # `.example.com` of a route's `*.example.com`

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = origin = ctype = length = chunked = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                ctype = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        err = self._refusal(scope, host, origin, ctype, length, chunked)
        if err is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # closed before accept: the server answers 403
            await send({"type": "websocket.close", "code": 1008, "reason": err.detail[:120]})
        else:
            await problem_response(err, scope["path"])(scope, receive, send)

    def _same_origin(self, origin: str, host: bytes | None) -> bool:
        """Whether a page of this gateway's own (the dashboard) sent the request: its Origin
        names the Host the request was sent to. Only where Host is checked: with any Host
        answered, a page whose name was rebound to the gateway would pass as its own."""
        if self.hosts is None or host is None:
            return False
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        return netloc.lower() == host.decode("latin-1").strip().lower()

    def _refusal(
        self,
        scope: Scope,
        host: bytes | None,
        origin: bytes | None,
        ctype: bytes | None,
        length: bytes | None,
        chunked: bytes | None,
    ) -> MeshgateError | None:
        # No Host at all (HTTP/1.0) is let through: a browser always sends one.
        if host is not None and self.hosts is not None:
            name = bare_host(host.decode("latin-1"))
            if name not in self.hosts and not (self.suffixes and name.endswith(self.suffixes)):
                return HostNotAllowed(
                    f"host {name!r} is not served here; add it to mesh.allowed_hosts to permit it"
                )
        if scope.get("method") not in _STATE_CHANGING:
            return None
        path: str = scope["path"]
        consul = path.startswith(CONSUL_PREFIX)
        if not path.startswith(REST_PREFIX) and not consul:
            return None  # /mcp and /messages check Origin themselves, answering in JSON-RPC
        if origin is not None:
            text = origin.decode("latin-1")
            if not origin_allowed(text, self.origins) and not self._same_origin(text, host):
                return origin_refusal(text)
        if consul:  # Consul's clients send their JSON bodies without a Content-Type
            return None
        has_body = chunked is not None or (length is not None and length.strip() != b"0")
        if has_body and not path.startswith(PROXY_PREFIX) and not _is_json(ctype):
            return UnsupportedMediaType(
                "a request body here must be JSON: send Content-Type: application/json"
            )
        return None
