"""Bearer JWTs checked against a real OIDC issuer (meshgate.testing.oidc): an HTTP server on
loopback publishing its discovery document and JWKS, with keys made here and tokens signed by
PyJWT."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from meshgate.config.security import JwtSettings
from meshgate.errors import Unauthenticated, Unavailable
from meshgate.security.jwt import JwtVerifier
from meshgate.testing.oidc import Issuer, Key

AUD = "https://mesh.example.com/mcp"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings(issuer: Issuer, **over: Any) -> JwtSettings:
    fields: dict[str, Any] = {
        "issuer": issuer.url,
        "audience": AUD,
        "jwks_url": f"{issuer.url}/jwks",
        "roles_claim": "realm_access.roles",
        "role_map": {"mesh-admin": "admin"},
        "default_roles": ["user"],
    }
    fields.update(over)
    return JwtSettings.model_validate(fields)


def claims(issuer: Issuer, clock: Clock, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": issuer.url,
        "aud": AUD,
        "sub": "alice",
        "iat": int(clock.now),
        "exp": int(clock.now) + 300,
        "realm_access": {"roles": ["mesh-admin", "reader"]},
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


Scenario = Callable[[Issuer, Clock], Awaitable[None]]


def run(scenario: Scenario, *keys: Key) -> None:
    async def main() -> None:
        issuer = await Issuer().start()
        issuer.keys = list(keys)
        try:
            await scenario(issuer, Clock())
        finally:
            await issuer.stop()

    asyncio.run(main())


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.status == 401
    return info.value.detail


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_valid_token_is_the_principal_its_claims_name_with_mapped_roles() -> None:
    rsa_key, ec_key = Key("r1"), Key("e1", "ES256")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer), clock=clock)
        await verifier.start()
        assert issuer.jwks_hits == 1
        token_claims = claims(issuer, clock)
        p = await verifier.verify(rsa_key.sign(token_claims))
        assert p.name == "alice"
        assert p.roles == {"admin", "reader", "user"}
        assert p.via == "jwt"
        assert p.expires_at == token_claims["exp"]
        assert p.claims["realm_access"] == {"roles": ["mesh-admin", "reader"]}
        p = await verifier.verify(ec_key.sign(claims(issuer, clock, sub="bob")))
        assert p.name == "bob"
        # Both keys came from the one fetch at start.
        assert issuer.jwks_hits == 1
        await verifier.close()

    run(scenario, rsa_key, ec_key)


def test_roles_come_from_scope_strings_and_namespaced_claims() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        scoped = JwtVerifier(settings(issuer, roles_claim="scope", role_map={}), clock=clock)
        p = await scoped.verify(key.sign(claims(issuer, clock, scope="mcp:read  mcp:write")))
        assert p.roles == {"mcp:read", "mcp:write", "user"}
        # Auth0 puts roles under a URL-named claim, dots and all.
        auth0 = JwtVerifier(
            settings(
                issuer,
                roles_claim="https://mesh.example.com/roles",
                name_claim="email",
                default_roles=[],
            ),
            clock=clock,
        )
        token = key.sign(
            claims(
                issuer,
                clock,
                email="carol@example.com",
                **{"https://mesh.example.com/roles": ["ops"]},
            )
        )
        p = await auth0.verify(token)
        assert (p.name, p.roles) == ("carol@example.com", frozenset({"ops"}))
        # No roles claim: the default roles only; no name claim: refused.
        p = await scoped.verify(key.sign(claims(issuer, clock)))
        assert p.roles == {"user"}
        detail = await refused(auth0, key.sign(claims(issuer, clock)))
        assert "'email'" in detail
        for v in (scoped, auth0):
            await v.close()

    run(scenario, key)


def test_time_claims_are_checked_with_the_leeway() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, leeway_s=30), clock=clock)
        now = int(clock.now)
        token = key.sign(claims(issuer, clock, exp=now + 60))
        await verifier.verify(token)
        clock.now = now + 80  # expired 20 s ago: within the leeway
        await verifier.verify(token)
        clock.now = now + 91
        assert "expired" in await refused(verifier, token)
        clock.now = now

        assert "not valid yet" in await refused(
            verifier, key.sign(claims(issuer, clock, nbf=now + 31))
        )
        await verifier.verify(key.sign(claims(issuer, clock, nbf=now + 29)))
        assert "'iat'" in await refused(verifier, key.sign(claims(issuer, clock, iat=now + 60)))
        assert "'exp'" in await refused(verifier, key.sign(claims(issuer, clock, exp=None)))
        assert "not a number" in await refused(
            verifier, key.sign(claims(issuer, clock, exp="tomorrow"))
        )
        await verifier.close()

    run(scenario, key)


def test_audience_and_issuer_must_match() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, audience=[AUD, "meshgate"]), clock=clock)
        assert "audience" in await refused(
            verifier, key.sign(claims(issuer, clock, aud="https://other.example.com"))
        )
        assert "'aud'" in await refused(verifier, key.sign(claims(issuer, clock, aud=None)))
        # One of the audiences is enough, in a list or alone.
        await verifier.verify(key.sign(claims(issuer, clock, aud=["x", "meshgate"])))
        assert "issuer" in await refused(
            verifier, key.sign(claims(issuer, clock, iss=issuer.url + "/"))
        )
        assert "issuer" in await refused(
            verifier, key.sign(claims(issuer, clock, iss="https://evil.example.com"))
        )
        await verifier.close()

    run(scenario, key)


def test_forged_tokens_are_refused() -> None:
    key, other = Key("k1"), Key("k1")  # `other` claims to be k1 but is not

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer), clock=clock)
        good = key.sign(claims(issuer, clock))
        head, body, sig = good.split(".")
        # A signature with one byte changed.
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[10] ^= 1
        assert "signature" in await refused(verifier, f"{head}.{body}.{b64(bytes(raw))}")
        # Claims changed under the original signature.
        forged = b64(json.dumps(claims(issuer, clock, sub="mallory")).encode())
        assert "signature" in await refused(verifier, f"{head}.{forged}.{sig}")
        # Signed by another key under the same key id.
        assert "signature" in await refused(verifier, other.sign(claims(issuer, clock)))

        # alg none: no signature at all.
        none_head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
        detail = await refused(verifier, f"{none_head}.{body}.")
        assert "'none' is not allowed" in detail

        # HS256 with the RSA public key (as the issuer publishes it) as the shared secret.
        hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
        mac = hmac.new(key.public_pem(), f"{hs_head}.{body}".encode(), hashlib.sha256)
        detail = await refused(verifier, f"{hs_head}.{body}.{b64(mac.digest())}")
        assert "'HS256' is not allowed" in detail

        # An allowed algorithm of another key type than the key it names.
        es_head = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "k1"}).encode())
        assert "does not match its key" in await refused(verifier, f"{es_head}.{body}.{sig}")

        for junk in ("", "abc", "a.b.c", "a.b", good + ".x", "x" * 20000):
            await refused(verifier, junk)
        await verifier.verify(good)
        await verifier.close()

    run(scenario, key)


def test_a_key_pinned_to_one_algorithm_refuses_another() -> None:
    key = Key("k1")
    key.jwk["alg"] = "PS256"

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer), clock=clock)
        assert "does not match its key" in await refused(verifier, key.sign(claims(issuer, clock)))
        await verifier.close()

    run(scenario, key)


def test_a_token_without_kid_uses_the_only_key() -> None:
    lone, second = Key(None), Key("k2")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_min_refresh_s=0), clock=clock)
        await verifier.verify(lone.sign(claims(issuer, clock)))
        issuer.keys.append(second)
        clock.now += 301  # the cache expires: the keys it has serve while it fetches again
        await verifier.verify(lone.sign(claims(issuer, clock)))
        await verifier.jwks.settled()
        assert issuer.jwks_hits == 2
        # The fetch found two keys: a token without kid no longer says which.
        assert "no key id" in await refused(verifier, lone.sign(claims(issuer, clock)))
        await verifier.close()

    run(scenario, lone)


def test_discovery_finds_the_jwks_from_the_issuer() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_url=None), clock=clock)
        p = await verifier.verify(key.sign(claims(issuer, clock)))
        assert p.name == "alice"
        assert (issuer.discovery_hits, issuer.jwks_hits) == (1, 1)
        # The JWKS URL is remembered: a later refresh does not ask for discovery again.
        clock.now += 301
        await verifier.verify(key.sign(claims(issuer, clock)))
        await verifier.jwks.settled()
        assert (issuer.discovery_hits, issuer.jwks_hits) == (1, 2)
        await verifier.close()

    run(scenario, key)


def test_an_unknown_kid_refetches_once_and_rotation_works() -> None:
    old, new = Key("2026-01"), Key("2026-02")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_min_refresh_s=10), clock=clock)
        await verifier.verify(old.sign(claims(issuer, clock)))
        assert issuer.jwks_hits == 1
        issuer.keys = [new]  # the issuer rotates
        clock.now += 10
        await verifier.verify(new.sign(claims(issuer, clock)))
        assert issuer.jwks_hits == 2
        # The old key is gone; within the refetch interval its tokens cost no fetch.
        assert "does not publish" in await refused(verifier, old.sign(claims(issuer, clock)))
        assert issuer.jwks_hits == 2
        await verifier.close()

    run(scenario, old)


def test_a_flood_of_unknown_kids_costs_the_issuer_one_fetch() -> None:
    key = Key("k1")
    strangers = [Key(f"made-up-{i}") for i in range(3)]

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_min_refresh_s=10), clock=clock)
        await verifier.start()
        assert issuer.jwks_hits == 1
        clock.now += 10
        issuer.hold, issuer.asked = asyncio.Event(), asyncio.Event()
        tokens = [
            strangers[i % 3].sign(claims(issuer, clock), kid=f"made-up-{i}") for i in range(50)
        ]
        calls = [asyncio.ensure_future(verifier.verify(t)) for t in tokens]
        await asyncio.wait_for(issuer.asked.wait(), 10)
        # Every call is waiting on the one fetch the issuer holds back.
        assert not any(c.done() for c in calls)
        issuer.hold.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results)
        assert issuer.jwks_hits == 2
        # More made-up kids within the interval: no fetch at all.
        for t in tokens[:10]:
            await refused(verifier, t)
        assert issuer.jwks_hits == 2
        await verifier.verify(key.sign(claims(issuer, clock)))
        await verifier.close()

    run(scenario, key)


def test_issuer_down_at_start_is_503_until_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        await issuer.stop()  # the port now refuses connections
        verifier = JwtVerifier(settings(issuer, jwks_min_refresh_s=10), clock=clock)
        with caplog.at_level(logging.WARNING, "meshgate.security.jwt"):
            await verifier.start()  # not fatal
        assert "keys unavailable" in caplog.text
        token = key.sign(claims(issuer, clock))
        with pytest.raises(Unavailable) as info:
            await verifier.verify(token)
        assert info.value.status == 503
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert "127.0.0.1" not in info.value.detail  # the cause is logged, not shown

        await issuer.start()  # back, on the same port
        # Within the refetch interval the verifier does not try again...
        with pytest.raises(Unavailable):
            await verifier.verify(token)
        assert issuer.jwks_hits == 0
        # ...after it, it does, and recovers.
        clock.now += 10
        assert (await verifier.verify(token)).name == "alice"
        assert issuer.jwks_hits == 1
        await verifier.close()

    run(scenario, key)


def test_issuer_down_later_keeps_the_cached_keys(caplog: pytest.LogCaptureFixture) -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_cache_s=60), clock=clock)
        await verifier.start()
        await issuer.stop()
        clock.now += 61  # the cache is stale and the issuer does not answer
        with caplog.at_level(logging.WARNING, "meshgate.security.jwt"):
            p = await verifier.verify(key.sign(claims(issuer, clock)))
            assert p.name == "alice"  # not held up by the fetch...
            await verifier.jwks.settled()  # ...which fails
        assert "keeping the 1 cached" in caplog.text
        # Within the refetch interval, no new attempt; the cached key keeps serving.
        attempts = caplog.text.count("could not be refreshed")
        assert (await verifier.verify(key.sign(claims(issuer, clock)))).name == "alice"
        await verifier.jwks.settled()
        assert caplog.text.count("could not be refreshed") == attempts
        await verifier.close()

    run(scenario, key)


def test_a_jwks_that_is_not_one_is_unavailable_not_a_crash() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(
            settings(issuer, jwks_url=f"{issuer.url}/.well-known/openid-configuration"),
            clock=clock,
        )
        with pytest.raises(Unavailable):
            await verifier.verify(key.sign(claims(issuer, clock)))
        await verifier.close()

    run(scenario, key)


def test_a_short_rsa_key_is_refused() -> None:
    weak = Key("weak")
    weak.private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak.jwk = {**json.loads(RSAAlgorithm.to_jwk(weak.private.public_key())), "kid": "weak"}

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer), clock=clock)
        with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
            token = weak.sign(claims(issuer, clock))
        assert "too weak" in await refused(verifier, token)
        await verifier.close()

    run(scenario, weak)


def test_a_slow_issuer_holds_up_no_token_whose_key_is_known() -> None:
    key = Key("k1")

    async def scenario(issuer: Issuer, clock: Clock) -> None:
        verifier = JwtVerifier(settings(issuer, jwks_cache_s=60), clock=clock)
        await verifier.start()
        clock.now += 61
        issuer.hold, issuer.asked = asyncio.Event(), asyncio.Event()
        # The cache is stale: this starts a fetch the issuer holds back, and answers anyway.
        assert (await verifier.verify(key.sign(claims(issuer, clock)))).name == "alice"
        assert verifier.jwks.fetching
        await asyncio.wait_for(issuer.asked.wait(), 10)
        assert (await verifier.verify(key.sign(claims(issuer, clock)))).name == "alice"
        assert issuer.jwks_hits == 2  # the second token joined the held fetch
        issuer.hold.set()
        await verifier.jwks.settled()
        await verifier.close()

    run(scenario, key)
