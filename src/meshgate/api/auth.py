"""Authentication on every route, the mesh operations' policy checks, and the OAuth protected
resource metadata (RFC 9728) MCP clients discover the authorization server by.

`Authentication` is an ASGI middleware: it finds each request's principal once, before any
route runs, and leaves it in the scope (`meshgate.security.principal_of`). Without `[auth]`
every request runs as the local principal (the gateway then serves loopback only). With it, a
request without a valid credential gets 401 with `WWW-Authenticate: Bearer
resource_metadata=...`, except on public paths. On the Consul-compatible API (`/v1/...`) a
Consul token (`X-Consul-Token`, `?token=`) is read as a bearer credential, and a refusal is
Consul's plain-text 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api.openapi import problems
from meshgate.api.problems import CONSUL_PREFIX, problem_response
from meshgate.api.responses import json_response
from meshgate.errors import MeshgateError, NotFound, Unauthenticated
from meshgate.observability.audit import audit
from meshgate.security import NOBODY, PRINCIPAL_SCOPE_KEY, principal_of
from meshgate.security.authn import Authenticator
from meshgate.security.client_cert import ClientCert, client_certificate
from meshgate.security.nodes import NODE_HEADERS
from meshgate.security.oauth import (
    WELL_KNOWN,
    metadata_path,
    protected_resource_metadata,
    www_authenticate,
)
from meshgate.security.policy import Action

_CREDENTIAL_HEADERS = (
    b"authorization",
    b"x-api-key",
    *(h.encode() for h in NODE_HEADERS),
)
CONSUL_TOKEN = "x-consul-token"


def consul_token(scope: Scope) -> str | None:
    """The token a Consul client sent: `X-Consul-Token`, else `?token=` (Consul's own two
    ways besides `Authorization: Bearer`)."""
    for name, value in scope["headers"]:
        if name == CONSUL_TOKEN.encode():
            return value.decode("latin-1").strip() or None
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if key == "token":
            return value.strip() or None
    return None


def base_url(scope: Scope, resource: str | None) -> str:
    """This gateway's public URL: the configured `resource`, else the request's own."""
    if resource:
        return resource.rstrip("/")
    host = ""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    if not host and scope.get("server"):
        h, port = scope["server"][:2]
        host = f"[{h}]:{port}" if ":" in str(h) else f"{h}:{port}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _resource_path(path: str) -> str:
    """The protected resource a request's path belongs to: an MCP endpoint, else the root."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[1] == "mcp":
        return "/".join(parts[:3])
    return ""


class Authentication:
    """The ASGI middleware that authenticates every request once."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        public_paths: Sequence[str] = (),
        public_prefixes: Sequence[str] = (),
        resource: str | None = None,
        certificate: Callable[[Scope], ClientCert | None] = client_certificate,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public = frozenset(public_paths)
        # Whole trees served to anyone: the metadata, and the dashboard's files (the sign-in
        # page itself; they hold no data).
        self.public_prefixes = (WELL_KNOWN, *public_prefixes)
        self.resource = resource
        self.certificate = certificate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self.authenticator.enabled:
            scope[PRINCIPAL_SCOPE_KEY] = await self.authenticator.authenticate({})
            await self.app(scope, receive, send)
            return
        if path in self.public or path.startswith(self.public_prefixes):
            scope[PRINCIPAL_SCOPE_KEY] = NOBODY
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CREDENTIAL_HEADERS
        }
        consul = path.startswith(CONSUL_PREFIX)
        if consul and "authorization" not in headers:
            token = consul_token(scope)
            if token is not None:
                headers["authorization"] = f"Bearer {token}"
        cert = self.certificate(scope)
        try:
            scope[PRINCIPAL_SCOPE_KEY] = await self.authenticator.authenticate(headers, cert, path)
        except Unauthenticated as e:
            client = scope.get("client")
            audit(
                "auth_failed",
                principal=None,
                outcome="refused",
                path=path,
                client=client[0] if client else None,
                reason=e.detail,
            )
            if consul:  # Consul's clients read a plain-text 403, not a challenge
                await problem_response(e, path)(scope, receive, send)
                return
            metadata = base_url(scope, self.resource) + metadata_path(_resource_path(path))
            error = e.extra.pop("error", "invalid_token")
            e.headers["WWW-Authenticate"] = www_authenticate(
                metadata,
                error=None if error == "missing_token" else error,
                description=None if error == "missing_token" else e.detail,
            )
            await problem_response(e, path)(scope, receive, send)
            return
        except MeshgateError as e:  # the issuer's keys cannot be had: our problem, not theirs
            await problem_response(e, path)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def operation_check(operation: str) -> Callable[[Request], Awaitable[None]]:
    """A check that the caller's roles allow this mesh operation (403 otherwise)."""

    async def check(request: Request) -> None:
        gate = request.app.state.router.gate
        await gate.admit(principal_of(request.scope), Action.mesh(operation))

    return check


def requires(operation: str) -> Any:
    """A route dependency: the caller's roles must allow this mesh operation (403)."""
    return Depends(operation_check(operation))


def build_metadata(
    *,
    enabled: bool,
    resource: str | None,
    authorization_servers: Sequence[str],
    scopes: Sequence[str],
) -> APIRouter:
    """`GET /.well-known/oauth-protected-resource[/mcp[/NAME]]` (RFC 9728)."""
    api = APIRouter(tags=["auth"])

    async def metadata(request: Request, path: str = "") -> Response:
        if not enabled:
            raise NotFound("authentication is not configured on this gateway")
        own = "/" + path.strip("/") if path.strip("/") else ""
        if own and _resource_path(own) != own:
            raise NotFound(f"no protected resource at {own}")
        url = base_url(request.scope, resource) + own
        return json_response(protected_resource_metadata(url, authorization_servers, scopes))

    for path in (WELL_KNOWN, WELL_KNOWN + "/{path:path}"):
        api.add_api_route(
            path, metadata, methods=["GET"], summary="RFC 9728 metadata", responses=problems(404)
        )
    return api


__all__ = [
    "Authentication",
    "base_url",
    "build_metadata",
    "operation_check",
    "requires",
]
