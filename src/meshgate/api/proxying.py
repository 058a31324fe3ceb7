"""The HTTP service proxy: one client request passed to an HTTP service through the router,
its answer streamed back. The mesh API's `/call/{name}/{path}` and the edge route table
(`api.edge`) both send their requests here, so both get the same identity, policy, limits,
balancing, breakers, retries (only when safe), body bounds, header handling, metrics and
traces."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from typing import Any

from fastapi import Request
from starlette.responses import Response

from meshgate.api.forwarding import PEER, TrustedProxies, forwarded, is_forwarding_header
from meshgate.api.problems import read_body
from meshgate.api.routing import ProxiedResponse
from meshgate.errors import MeshgateError, PayloadTooLarge
from meshgate.router import IDEMPOTENT_METHODS, Router, hash_key
from meshgate.router.call import (
    CALLER_HEADER,
    HOPS_HEADER,
    SESSION_HEADER,
    TIMEOUT_HEADER,
    Call,
    parse_hops,
    parse_timeout,
)
from meshgate.security import principal_of
from meshgate.services.mesh import ServiceMesh

# Hop-by-hop headers (RFC 9110 section 7.6.1): never passed on, either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers not passed on: hop-by-hop, those the client library sets itself, and the
# mesh's own (set anew for the next hop). Forwarding headers are dropped too, unless the client
# is a trusted proxy (`forwarding.forwarded` decides which go on).
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", TIMEOUT_HEADER, HOPS_HEADER}
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
# Response headers not passed back. Content-Length stays (the body passes unchanged, so the
# server need not re-frame it in chunks), except where a body must be empty whatever it says.
NOT_RETURNED = frozenset(h.encode() for h in HOP_BY_HOP)
NOT_RETURNED_EMPTY = NOT_RETURNED | {b"content-length"}


def _timeout(value: str | None) -> float | None:
    """A caller's `X-Meshgate-Timeout` (the router holds it to `min_call_timeout_s`, except on
    a call that comes from another gateway, with what is left of its deadline)."""
    if value is None:
        return None
    return parse_timeout(value, name=TIMEOUT_HEADER, minimum=0.001)


class HttpProxy:
    """Passes requests on to HTTP services through the router."""

    def __init__(
        self,
        router: Router,
        services: ServiceMesh,
        *,
        max_body_bytes: int,
        max_hops: int = 8,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.router = router
        self.services = services
        self.max_body_bytes = max_body_bytes
        self.max_hops = max_hops
        self.trusted = TrustedProxies(trusted_proxies)

    async def forward(
        self,
        request: Request,
        name: str,
        target: str,
        *,
        preserve_host: bool = False,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """Send `request` to service `name` at path `target` (already checked not to climb
        out of the service's base path) with the client's query; the answer as it comes.

        `preserve_host` sends the client's Host header on; `extra` headers are added (the
        edge's `X-Forwarded-Prefix`)."""
        router, limit = self.router, self.max_body_bytes
        scope = request.scope
        incoming = request.headers
        hops = parse_hops(incoming.get(HOPS_HEADER), max_hops=self.max_hops)
        body: bytes | AsyncIterator[bytes]
        limited: _Limited | None = None
        method = scope["method"]
        declared = incoming.get("content-length")
        size = int(declared) if declared and declared.isdigit() else 0
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit}")
        peer = scope.get(PEER) or (scope["client"][0] if scope.get("client") else "")
        client, forwarding = forwarded(incoming, peer, scope["scheme"], self.trusted)
        call = Call(
            service=name,
            kind="http",
            target=target,
            entry="proxy",
            incoming=incoming,
            caller=incoming.get(CALLER_HEADER),
            body_size=size,
            timeout_s=_timeout(incoming.get(TIMEOUT_HEADER)),
            hops=hops,
            client=client,
            method=method,
            principal=principal_of(scope),
        )
        # Checked before a byte of the body is read: a caller who may not send it never does.
        await router.admit(call)
        if method in IDEMPOTENT_METHODS:
            # Read whole: a request that failed after it was sent may be sent again.
            body = await read_body(request, limit)
        else:  # streamed on; never sent twice
            limited = _Limited(request.stream(), limit)
            body = limited.chunks()
        pool = self.services.pools.get(name)
        # With [auth] on, the client's credential is the gateway's: a service could replay it.
        keep_credentials = not router.gate.enabled or (
            pool is not None and pool.policy.forward_credentials
        )
        headers = (
            passed_on(scope, streamed=not isinstance(body, bytes), credentials=keep_credentials)
            + forwarding
            + list(extra)
        )
        if preserve_host and "host" in incoming:
            headers.append(("host", incoming["host"]))
        key = (
            hash_key(
                pool,
                session=incoming.get(SESSION_HEADER),
                client=client,
                arguments=dict(request.query_params),
            )
            if pool is not None and pool.policy.strategy in ("consistent_hash", "ip_hash")
            else None
        )
        try:
            upstream = await router.proxy(
                name,
                method,
                target,
                call=call,
                query=scope["query_string"].decode("latin-1"),
                headers=headers,
                body=body,
                key=key,
            )
        except MeshgateError:
            if limited is not None and limited.exceeded:  # cut short by us, not by the service
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from None
            raise
        status = upstream.status_code
        dropped = NOT_RETURNED_EMPTY if status in (204, 304) else NOT_RETURNED
        out = [(k.lower(), v) for k, v in upstream.raw_headers]
        return ProxiedResponse(upstream, [(k, v) for k, v in out if k not in dropped])


def passed_on(
    scope: MutableMapping[str, Any], *, streamed: bool, credentials: bool = True
) -> list[tuple[str, str]]:
    """The client's request headers that go on to the service, read from the raw scope: less
    hop-by-hop, forwarding and the mesh's own headers (the caller adds the forwarding ones it
    trusts, and the router the mesh's and the interceptors'), and less the client's
    credentials (Authorization, X-API-Key) unless `credentials`."""
    headers: list[tuple[str, str]] = []
    declared = ""
    for raw_name, raw_value in scope["headers"]:  # names come lower-cased from the server
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-length":
            declared = value
        if name in NOT_FORWARDED or is_forwarding_header(name):
            continue
        if not credentials and name in CREDENTIAL_HEADERS:
            continue
        headers.append((name, value))
    if streamed and declared:
        # A streamed body keeps its declared length (so the service need not read chunks).
        headers.append(("content-length", declared))
    return headers


class _Limited:
    """A request body passed on as it arrives, cut off past `limit` bytes."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self.limit = limit
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._chunks:
            size += len(chunk)
            if size > self.limit:
                self.exceeded = True
                raise PayloadTooLarge(f"request body exceeds the limit of {self.limit} bytes")
            yield chunk
