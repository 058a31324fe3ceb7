"""What the HTTP proxy sends on: a path that stays under the service's base URL, the
`X-Forwarded-*` headers (a client's own only from a trusted proxy), and the balancer's key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.errors import InvalidInput

# Headers that say where a request came from; only a trusted proxy may set them.
_FORWARDING = frozenset({"forwarded", "x-real-ip"})
_FORWARDING_PREFIX = "x-forwarded-"

# A client that percent-encodes a path more often than this is not an honest one.
_MAX_DECODES = 4
_SEPARATORS = re.compile(r"[/\\]")


def is_forwarding_header(name: str) -> bool:
    name = name.lower()
    return name in _FORWARDING or name.startswith(_FORWARDING_PREFIX)


def _dot_segment(text: str) -> bool:
    # `..;x` counts: some servers (Tomcat) drop the path parameter and then climb.
    return any(s.split(";", 1)[0] in (".", "..") for s in _SEPARATORS.split(text))


def climbs(raw: str) -> bool:
    """Whether a raw request path has a `.` or `..` segment in any decoding of it: literal,
    percent-encoded (`%2e%2e`, `.%2e`), encoded more than once (`%252e`), or separated by an
    encoded slash or a backslash (`..%2f`, `..\\`, `..%5c`)."""
    text = raw
    for _ in range(_MAX_DECODES):
        if _dot_segment(text):
            return True
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return True


def forward_path(raw_path: bytes, path: str) -> str:
    """The path to send to the service: the part of the client's raw path that Starlette
    decoded into `path` (the route's last parameter), percent-escapes kept as sent, so that
    `%2F` or `%3F` inside a segment reaches the service as the client wrote it.

    Refused with InvalidInput (400) when it could climb out of the service's base path.
    """
    raw = raw_path.decode("latin-1")
    if "%" not in raw and raw.endswith("/" + path):
        rest = path  # nothing was decoded: the parameter is the raw path's tail
    else:
        parts = raw.split("/")
        # Escapes never span a '/', so each raw segment decodes on its own: walk back from
        # the end until the decoded length is the parameter's, then check the text is the same.
        size, k = -1, len(parts)
        while k > 0 and size < len(path):
            k -= 1
            size += len(unquote(parts[k])) + 1
        rest = "/".join(parts[k:])
        if size != len(path) or unquote(rest) != path:
            raise InvalidInput("the request path cannot be split into service and path")
    if ("." in rest or "%" in rest or "\\" in rest) and climbs(rest):
        raise InvalidInput(
            "the path has a '.' or '..' segment (literal, percent-encoded or after a "
            "backslash); it could leave the service's base path, so it is refused"
        )
    return "/" + rest


class TrustedProxies:
    """The networks whose `X-Forwarded-*` headers are believed (`mesh.trusted_proxies`)."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(c) for c in cidrs]
        self._seen: dict[str, bool] = {}  # parsing an address costs microseconds; peers repeat

    def __contains__(self, host: str) -> bool:
        if not self.networks:
            return False
        known = self._seen.get(host)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[host] = self._match(host)
        return known

    def _match(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.strip().split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


PEER = "meshgate.peer"  # scope key: the address a request came from, when a proxy's


def real_client(headers: Headers, peer: str, trusted: TrustedProxies) -> str:
    """The client behind a trusted proxy: the right-most address of `X-Forwarded-For` that is
    not itself a trusted proxy (the left-most when all are); `peer` when there is none."""
    chain = [a.strip() for v in headers.getlist("x-forwarded-for") for a in v.split(",")]
    client = peer
    for addr in reversed([a for a in chain if a]):
        client = addr
        if addr not in trusted:
            break
    return client


class TrustedForwarding:
    """ASGI middleware, installed only when `mesh.trusted_proxies` is set: a request from a
    trusted proxy gets the client its `X-Forwarded-For` names and the scheme its
    `X-Forwarded-Proto` says, so that every route (MCP `ip_hash` too) sees the real client;
    the proxy's own address is kept under `PEER` in the scope for the HTTP proxy."""

    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and client[0] in self.trusted:
            headers = Headers(scope=scope)
            scope = {**scope, PEER: client[0]}
            scope["client"] = (real_client(headers, client[0], self.trusted), client[1])
            proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                secure = proto == "https"
                if scope["type"] == "websocket":
                    scope["scheme"] = "wss" if secure else "ws"
                else:
                    scope["scheme"] = proto
        await self.app(scope, receive, send)


def forwarded(
    headers: Headers, peer: str, scheme: str, trusted: TrustedProxies
) -> tuple[str, list[tuple[str, str]]]:
    """(the client's address, the forwarding headers to send on).

    From a trusted proxy, its `X-Forwarded-*` and `Forwarded` headers go on, with the peer
    added to `X-Forwarded-For`, and the client is the right-most address in it that is not
    itself a trusted proxy. From anyone else they are dropped and replaced by what the
    gateway saw: the peer, the scheme, the Host header.
    """
    host = headers.get("host", "")
    if peer not in trusted:
        return peer, [
            ("x-forwarded-for", peer),
            ("x-forwarded-proto", scheme),
            ("x-forwarded-host", host),
        ]
    chain = [a.strip() for v in headers.getlist("x-forwarded-for") for a in v.split(",")]
    chain = [a for a in chain if a]
    client = real_client(headers, peer, trusted)
    out = [(k, v) for k, v in headers.items() if is_forwarding_header(k)]
    out = [(k, v) for k, v in out if k.lower() != "x-forwarded-for"]
    out.append(("x-forwarded-for", ", ".join([*chain, peer])))
    if "x-forwarded-proto" not in headers:
        out.append(("x-forwarded-proto", scheme))
    if "x-forwarded-host" not in headers:
        out.append(("x-forwarded-host", host))
    return client, out
