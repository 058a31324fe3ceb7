"""Authentication: from a request's credentials to the principal it runs as.

A peer node's signed request (`meshgate.security.nodes`) runs as the caller it asserts.
Otherwise credentials, first found wins: `Authorization: Bearer TOKEN` (an API key made by `meshgate
keys create`, else a JWT from the configured issuer), `X-API-Key: KEY`, then a verified client
certificate. A request with none runs with `anonymous_roles` if any are configured, and is
refused with 401 otherwise. A credential that is present and wrong is always refused: it is
never taken as no credential at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from meshgate.config import AuthSettings
from meshgate.errors import Unauthenticated
from meshgate.security.client_cert import ClientCert
from meshgate.security.nodes import NODE_HEADERS, NodeCredentials
from meshgate.security.principal import LOCAL, Principal

API_KEY_PREFIX = "mgk_"


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


class Authenticator:
    """Finds the principal of a request, or refuses it (Unauthenticated, 401)."""

    def __init__(
        self,
        settings: AuthSettings | None,
        *,
        keys: TokenVerifier | None = None,
        jwt: TokenVerifier | None = None,
        nodes: NodeCredentials | None = None,
    ) -> None:
        self.nodes = nodes
        self.settings = settings
        self.enabled = settings is not None and settings.enabled
        self.keys = keys if settings is not None and settings.api_keys else None
        self.jwt = jwt
        anonymous = settings.anonymous_roles if settings is not None else ()
        self.anonymous = (
            Principal("anonymous", frozenset(anonymous), via="anonymous") if anonymous else None
        )

    async def authenticate(
        self, headers: Mapping[str, str], certificate: ClientCert | None = None, path: str = ""
    ) -> Principal:
        """The principal of a request with these (lower-case) headers, to `path`."""
        if not self.enabled:
            return LOCAL
        if any(h in headers for h in NODE_HEADERS):
            # A peer node's request: its signature, never a credential beside it, decides.
            if self.nodes is None:
                raise Unauthenticated("this gateway takes no node requests (no cluster_secret)")
            return self.nodes.verify(headers, path)
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated(
                    "the Authorization header must be 'Bearer <API key or token>'",
                    extra={"error": "invalid_request"},
                )
            return await self._token(token)
        key = headers.get("x-api-key")
        if key is not None:
            if not key.startswith(API_KEY_PREFIX):
                raise Unauthenticated("X-API-Key does not hold a meshgate API key")
            return await self._token(key.strip())
        if certificate is not None and self.settings is not None and self.settings.mtls:
            return self._certificate(certificate)
        if self.anonymous is not None:
            return self.anonymous
        raise Unauthenticated(
            "this gateway needs a credential: 'Authorization: Bearer <API key or token>'",
            extra={"error": "missing_token"},
        )

    async def _token(self, token: str) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            if self.keys is None:
                raise Unauthenticated("API keys are not accepted by this gateway")
            return await self.keys.verify(token)
        if self.jwt is None:
            raise Unauthenticated(
                "the bearer token is not a meshgate API key, and no JWT issuer is configured"
            )
        return await self.jwt.verify(token)

    def _certificate(self, cert: ClientCert) -> Principal:
        assert self.settings is not None and self.settings.mtls is not None
        mtls = self.settings.mtls
        name = cert.common_name or cert.subject
        roles = {*mtls.roles, *mtls.subject_roles.get(name, ())}
        return Principal(name, frozenset(roles), via="mtls")
