"""An OIDC issuer's signing keys (its JWKS), fetched without blocking the event loop, cached,
and refetched at most every `jwks_min_refresh_s` however many tokens ask for a key it lacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from meshgate.config.security import JwtSettings
from meshgate.errors import Unavailable

log = logging.getLogger("meshgate.security.jwt")

# A JWKS is a few kilobytes; a larger answer is a misconfigured URL or a hostile server, and
# reading it whole would spend memory on every refetch.
MAX_DOCUMENT_BYTES = 1 << 20
FETCH_TIMEOUT_S = 5.0

# The key types each algorithm family signs with: a key is used only for its own family, so an
# RSA public key can never be taken as, say, an HMAC secret.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def key_type_for(alg: str) -> str | None:
    """The JWK `kty` an algorithm's keys have (None: not an asymmetric algorithm we know)."""
    return _KEY_TYPES.get(alg[:2])


class JwksUnavailable(Unavailable):
    """The issuer's keys could not be fetched and none are cached."""


@dataclass(frozen=True)
class SigningKey:
    """One of the issuer's public keys: its type, the algorithm it is pinned to (when the
    JWKS says), and the key itself."""

    kid: str | None
    kty: str
    alg: str | None
    key: Any

    def allows(self, alg: str) -> bool:
        """Whether a token signed with `alg` may be checked with this key."""
        return self.kty == key_type_for(alg) and self.alg in (None, alg)


class KeySet:
    """The usable signing keys of one fetched JWKS: by key id, and those without one."""

    def __init__(self, document: Any) -> None:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS is not a JSON object with a 'keys' list")
        self.by_kid: dict[str, SigningKey] = {}
        self.anonymous: list[SigningKey] = []
        skipped = 0
        for data in document["keys"]:
            key = self._usable(data)
            if key is None:
                skipped += 1
            elif key.kid is not None:
                self.by_kid[key.kid] = key
            else:
                self.anonymous.append(key)
        if skipped:
            log.info("JWKS: %d key(s) skipped (not asymmetric signing keys we can use)", skipped)

    @staticmethod
    def _usable(data: Any) -> SigningKey | None:
        if not isinstance(data, dict) or data.get("kty") not in _KEY_TYPES.values():
            return None
        if data.get("use", "sig") != "sig" or "d" in data:  # encryption keys; private keys
            return None
        kid, alg = data.get("kid"), data.get("alg")
        if not isinstance(kid, str | None) or not isinstance(alg, str | None):
            return None
        try:
            parsed = PyJWK(data)
        except PyJWTError:
            return None
        return SigningKey(kid=kid, kty=data["kty"], alg=alg, key=parsed.key)

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.anonymous)

    def find(self, kid: str | None) -> SigningKey | None:
        """The key a token names; without a key id, the only key there is."""
        if kid is not None:
            return self.by_kid.get(kid)
        every = [*self.by_kid.values(), *self.anonymous]
        return every[0] if len(every) == 1 else None


class JwksCache:
    """The issuer's current keys. After `jwks_cache_s` they are fetched again while they stay
    in use; a token naming an unknown key id (keys rotate) has them fetched at once. Never
    more often than every `jwks_min_refresh_s`, and concurrent requests share one fetch, so a
    flood of made-up key ids costs the issuer at most one request per interval."""

    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        self._jwks_url = settings.jwks_url
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error = ""
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0
        """JWKS documents requested from the issuer (successful or not)."""

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    @property
    def fetching(self) -> bool:
        """Whether a fetch of the JWKS is under way."""
        return self._inflight is not None

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._inflight
        await self._http.aclose()

    async def key(self, kid: str | None) -> SigningKey | None:
        """The key for `kid`, fetching the JWKS when the cache is empty or lacks it (within
        the refetch limit). None: the issuer does not publish such a key. Raises
        JwksUnavailable when no keys are known and the issuer cannot be reached."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._settings.jwks_cache_s
        found = self._keys.find(kid) if self._keys is not None else None
        if found is not None:
            if stale and self._may_fetch(now):
                # Refreshed behind the request: a slow or unreachable issuer holds up no token
                # whose key is already known.
                self._start()
            return found
        if self._may_fetch(now):
            await self.refresh()
            found = self._keys.find(kid) if self._keys is not None else None
        if self._keys is None:
            raise self._unavailable(now)
        return found

    def _may_fetch(self, now: float) -> bool:
        if self._inflight is not None:
            return True  # joining a fetch under way costs the issuer nothing more
        last = self._attempted_at
        return last is None or now - last >= self._settings.jwks_min_refresh_s

    def _unavailable(self, now: float) -> JwksUnavailable:
        wait = self._settings.jwks_min_refresh_s
        if self._attempted_at is not None:
            wait = max(0.0, self._attempted_at + wait - now)
        # The cause (URLs, status codes) goes to the log, not to the client.
        return JwksUnavailable(
            "the token issuer's signing keys could not be fetched; tokens cannot be checked "
            "until it answers",
            retry_after=max(1.0, wait),
        )

    async def refresh(self) -> None:
        """Fetch the JWKS now, or join the fetch under way. Failures are logged; the keys
        fetched before stay in use."""
        await asyncio.shield(self._start())

    async def settled(self) -> None:
        """Wait for the fetch under way, if any, to end."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)

    def _start(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._attempted_at = self._clock()
            task = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._fetched)
            self._inflight = task
        return self._inflight

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        # Every waiter may have been cancelled: the outcome is retrieved here so that an
        # unexpected error is not reported again as never retrieved.
        if not task.cancelled() and task.exception() is not None:
            log.warning("JWT issuer keys: the fetch failed", exc_info=task.exception())

    async def _fetch(self) -> None:
        try:
            url = self._jwks_url or await self._discover()
            self._jwks_url = url
            self.fetches += 1
            keys = KeySet(await self._get_json(url))
        except (httpx.HTTPError, ValueError) as exc:
            self._last_error = _describe(exc)
            if self._keys is None:
                log.warning("JWT issuer keys unavailable: %s", self._last_error)
            else:
                log.warning(
                    "JWT issuer keys could not be refreshed (%s); keeping the %d cached",
                    self._last_error,
                    len(self._keys),
                )
            return
        if not keys:
            self._last_error = "the JWKS holds no usable signing keys"
            log.warning("JWT issuer keys: %s", self._last_error)
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_error = ""

    async def _discover(self) -> str:
        issuer = self._settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        config = await self._get_json(url)
        if not isinstance(config, dict) or not isinstance(config.get("jwks_uri"), str):
            raise ValueError(f"{url} names no jwks_uri")
        # OpenID Connect Discovery 1.0 section 4.3: the document must be the issuer's own.
        if config.get("issuer") != issuer:
            raise ValueError(f"{url} names another issuer ({config.get('issuer')!r})")
        jwks_uri: str = config["jwks_uri"]
        return jwks_uri

    async def _get_json(self, url: str) -> Any:
        async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as r:
            if r.status_code != 200:
                raise ValueError(f"{url} answered {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise ValueError(f"{url} did not answer JSON") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPError):
        where = ""
        with contextlib.suppress(RuntimeError):
            where = f" from {exc.request.url}"
        return f"{type(exc).__name__}{where}"
    return str(exc)
