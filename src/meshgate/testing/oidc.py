"""An OAuth 2.1 / OIDC issuer on 127.0.0.1 for tests: keys made here, tokens signed by PyJWT.

It publishes what gateways and MCP clients discover (`/.well-known/openid-configuration`,
`/.well-known/oauth-authorization-server`, `/jwks`) and runs the smallest real flows an MCP
client needs: dynamic client registration (RFC 7591), the authorization code grant with PKCE
(S256 only) behind a consent step that approves at once as the issuer's `user`, and the client
credentials grant. Tokens carry `aud` = the issuer's `audience` (the API identifier the gateway
is configured with, as Auth0 or Keycloak map a resource to one) and the `resource` a client
asked for (RFC 8707) is recorded for tests to check.

`running_issuer()` runs one on its own event loop in a thread, for synchronous tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

TOKEN_LIFETIME_S = 300


class Key:
    """A signing key pair and the JWK the issuer publishes for it."""

    def __init__(self, kid: str | None, kind: str = "RS256") -> None:
        self.kid, self.alg = kid, kind
        if kind == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        jwk["use"] = "sig"
        if kid is not None:
            jwk["kid"] = kid
        self.jwk = jwk

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid} if self.kid is not None else {}
        headers.update(header)
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


@dataclass
class Client:
    """A client the issuer knows: registered, or made by a test with its roles."""

    client_id: str
    secret: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    resource: str | None
    scope: str | None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class Issuer:
    """An OIDC issuer on 127.0.0.1, counting what it is asked; `hold` keeps JWKS answers back
    until set. `user` and `user_roles` are whom the consent step approves as."""

    def __init__(self, audience: str = "meshgate") -> None:
        self.audience = audience
        self.keys: list[Key] = []
        self.clients: dict[str, Client] = {}
        self.user = "alice"
        self.user_roles: list[str] = []
        self.token_requests: list[dict[str, str]] = []
        self.jwks_hits = 0
        self.discovery_hits = 0
        self.hold: asyncio.Event | None = None
        self.asked = asyncio.Event()
        self.port = 0
        self._grants: dict[str, _Grant] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, roles: list[str], client_id: str | None = None) -> Client:
        """A confidential client for the client credentials grant, holding these roles."""
        made = Client(client_id or secrets.token_hex(8), secrets.token_urlsafe(16), roles=roles)
        self.clients[made.client_id] = made
        return made

    def mint(self, sub: str, roles: list[str], **over: Any) -> str:
        """A token as this issuer makes them, signed with its first key; `over` changes or
        (with None) removes claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
            "roles": roles,
        }
        claims.update(over)
        return self.keys[0].sign({k: v for k, v in claims.items() if v is not None})

    def metadata(self) -> dict[str, Any]:
        """The RFC 8414 / OIDC discovery document."""
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks",
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "registration_endpoint": f"{self.url}/register",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "authorization_response_iss_parameter_supported": True,
        }

    # -- routes --------------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        return web.json_response(self.metadata())

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        self.asked.set()
        if self.hold is not None:
            await self.hold.wait()
        return web.json_response({"keys": [k.jwk for k in self.keys]})

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _oauth_error("invalid_client_metadata", "the body is not JSON")
        uris = body.get("redirect_uris") if isinstance(body, dict) else None
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            return _oauth_error("invalid_redirect_uri", "redirect_uris must be a list of URLs")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        made = Client(
            secrets.token_hex(8),
            None if method == "none" else secrets.token_urlsafe(16),
            redirect_uris=list(uris),
        )
        self.clients[made.client_id] = made
        answer = {**body, "client_id": made.client_id, "token_endpoint_auth_method": method}
        if made.secret is not None:
            answer["client_secret"] = made.secret
        return web.json_response(answer, status=201)

    async def _authorize(self, request: web.Request) -> web.Response:
        """The consent step, approved at once as `user`: a redirect with the code."""
        q = request.query
        client = self.clients.get(q.get("client_id", ""))
        if client is None or q.get("redirect_uri") not in client.redirect_uris:
            return _oauth_error("invalid_request", "unknown client or redirect_uri")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return _oauth_error("invalid_request", "response_type=code with S256 PKCE only")
        challenge = q.get("code_challenge", "")
        if len(challenge) < 43:
            return _oauth_error("invalid_request", "code_challenge is missing or short")
        code = secrets.token_urlsafe(16)
        self._grants[code] = _Grant(
            client.client_id, q["redirect_uri"], challenge, q.get("resource"), q.get("scope")
        )
        params = {"code": code, "iss": self.url}
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode(params)}")

    def _authenticate_client(self, request: web.Request, form: dict[str, str]) -> Client | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            raw = base64.b64decode(header[6:]).decode()
            client_id, _, secret = raw.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(client_id)
        if client is None:
            return None
        if client.secret is not None and not secrets.compare_digest(client.secret, secret):
            return None
        return client

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        client = self._authenticate_client(request, form)
        if client is None:
            return _oauth_error("invalid_client", "client authentication failed", 401)
        grant_type = form.get("grant_type")
        if grant_type == "client_credentials":
            if client.secret is None:
                return _oauth_error("unauthorized_client", "public clients cannot")
            sub, roles = client.client_id, client.roles
        elif grant_type == "authorization_code":
            grant = self._grants.pop(form.get("code", ""), None)
            if grant is None or grant.client_id != client.client_id:
                return _oauth_error("invalid_grant", "unknown or used code")
            if form.get("redirect_uri") != grant.redirect_uri:
                return _oauth_error("invalid_grant", "redirect_uri does not match")
            if _s256(form.get("code_verifier", "")) != grant.challenge:
                return _oauth_error("invalid_grant", "PKCE verification failed")
            sub, roles = self.user, self.user_roles
        else:
            return _oauth_error("unsupported_grant_type", f"{grant_type!r}")
        return web.json_response(
            {
                "access_token": self.mint(sub, roles),
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_S,
            },
            headers={"Cache-Control": "no-store"},
        )

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> Issuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/oauth-authorization-server", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/register", self._register)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextmanager
def running_issuer(*keys: Key, audience: str = "meshgate") -> Iterator[Issuer]:
    """An issuer with these keys (one made here if none) served from a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="oidc-issuer", daemon=True)
    thread.start()
    issuer = Issuer(audience)
    issuer.keys = list(keys) or [Key("k1")]
    try:
        asyncio.run_coroutine_threadsafe(issuer.start(), loop).result(30)
        yield issuer
    finally:
        asyncio.run_coroutine_threadsafe(issuer.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
