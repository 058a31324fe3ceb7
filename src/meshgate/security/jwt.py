"""Bearer JWTs from an OIDC issuer: the signature checked with the issuer's published key, the
claims checked against `[auth.jwt]`, and the token's subject and roles made a `Principal`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from meshgate.config.security import JwtSettings
from meshgate.errors import Unauthenticated
from meshgate.security.jwks import JwksCache
from meshgate.security.principal import Principal

log = logging.getLogger("meshgate.security.jwt")

# Tokens arrive in a header; anything this long is not a token an issuer made.
MAX_TOKEN_CHARS = 16 * 1024


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value of a claim named by `path`: the claim of that exact name when there is one
    (Auth0's namespaced claims are URLs with dots), else the dotted path into nested objects
    (`realm_access.roles`). None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_from(value: Any, role_map: Mapping[str, str]) -> set[str]:
    """Role names from a roles claim (a list, or a space-separated string as `scope` is),
    each mapped through `role_map`; values of other types carry no roles."""
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list):
        names = [v for v in value if isinstance(v, str)]
    else:
        return set()
    return {role_map.get(name, name) for name in names if name}


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"the token's '{name}' claim is not a number")
    return float(value)


class JwtVerifier:
    """Checks bearer JWTs from the configured issuer and says whose they are."""

    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._audiences = (
            (settings.audience,) if isinstance(settings.audience, str) else settings.audience
        )
        self.jwks = JwksCache(settings, clock=clock)

    async def start(self) -> None:
        """Fetch the issuer's keys ahead of the first token; an issuer that does not answer
        yet is retried when tokens arrive."""
        try:
            await self.jwks.refresh()
        except Exception:
            log.warning("JWT issuer keys: the first fetch failed", exc_info=True)

    async def close(self) -> None:
        await self.jwks.close()

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names. Raises Unauthenticated (with a detail safe to
        show the caller) for any token that is not valid, and Unavailable when the issuer's
        keys cannot be had."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("the bearer token is too long to be a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise Unauthenticated("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise Unauthenticated(
                f"the token's algorithm {str(alg)[:16]!r} is not allowed; accepted: "
                + ", ".join(self._settings.algorithms)
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's key id ('kid') is not a string")

        key = await self.jwks.key(kid)
        if key is None:
            if kid is None:
                raise Unauthenticated(
                    "the token names no key id ('kid') and the issuer publishes several keys"
                )
            raise Unauthenticated("the token is signed with a key the issuer does not publish")
        # The key decides which algorithms may use it, not the token: a key of another type,
        # or one the issuer pinned to another algorithm, refuses the token.
        if not key.allows(alg):
            raise Unauthenticated(f"the token's algorithm {alg!r} does not match its key")

        claims = self._decode(token, key.key, alg)
        self._check_times(claims)
        return self._principal(claims)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(self._audiences),
                issuer=self._settings.issuer,
                # Times are checked below against our own clock, with the leeway.
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this gateway (audience)") from None
        except InvalidIssuerError:
            raise Unauthenticated("the token comes from an issuer not trusted here") from None
        except MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no '{exc.claim}' claim") from None
        except InvalidAlgorithmError:
            raise Unauthenticated(f"the token's algorithm {alg!r} does not match its key") from None
        except InvalidKeyError:
            # PyJWT refuses keys below the algorithm's minimum size (RSA under 2048 bits).
            raise Unauthenticated("the token's key is too weak to be trusted") from None
        except DecodeError:
            raise Unauthenticated("the bearer token is not a well-formed JWT") from None
        except PyJWTError:
            raise Unauthenticated("the token is not valid") from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock(), self._settings.leeway_s
        exp = _number(claims, "exp")
        if exp is None:
            raise Unauthenticated("the token has no 'exp' claim")
        if now >= exp + leeway:
            raise Unauthenticated("the token has expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise Unauthenticated("the token is not valid yet ('nbf' is in the future)")
        iat = _number(claims, "iat")
        if iat is not None and now < iat - leeway:
            raise Unauthenticated("the token is not valid yet ('iat' is in the future)")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        s = self._settings
        name = claim_at(claims, s.name_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(f"the token has no '{s.name_claim}' claim naming its subject")
        roles = roles_from(claim_at(claims, s.roles_claim), s.role_map)
        roles.update(s.default_roles)
        return Principal(
            name=name,
            roles=frozenset(roles),
            via="jwt",
            expires_at=float(claims["exp"]),
            claims=dict(claims),
        )
