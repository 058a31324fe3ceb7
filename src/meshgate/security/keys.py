"""API keys: made once and shown once, stored as a hash, listed, revoked, and verified into a
`Principal` on every request that presents one.

A key reads `mgk_<id>_<secret>`: the id (12 letters and digits) is public and names the key in
listings, logs and the store; the secret (32 random bytes, base64url) is known only to its
holder. The store keeps the SHA-256 of the secret, never the key itself. A secret of 256 random
bits cannot be guessed, so a fast hash is enough: slow password hashes (scrypt, argon2) exist
to protect low-entropy passwords, and would only cost every request time.

Keys live where the registry does: an SQLite file (`keys.sqlite3` in the data dir, WAL, so
`meshgate keys` can write it while a gateway reads it) or, with a Redis registry, one Redis hash
all gateways share. `verify` remembers what it looked up for `CACHE_S` seconds: a revoked key
stops working within that time on every gateway (at once on the one that revoked it).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from meshgate.config import SERVICE_NAME, Settings
from meshgate.config.redis import is_redis_url
from meshgate.config.security import ROLE_NAME
from meshgate.config.tls import redis_options
from meshgate.errors import Conflict, InvalidArguments, Unauthenticated
from meshgate.security.principal import Principal

KEY_PREFIX = "mgk_"
CACHE_S = 5.0
"""How long `verify` trusts a key it looked up: the longest a revoked key keeps working on a
gateway other than the one that revoked it."""
CACHE_SIZE = 4096

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$"
_ID_CHARS = string.ascii_letters + string.digits
_ID_LEN = 12
_SECRET_BYTES = 32
_TOKEN = re.compile(r"^mgk_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

State = Literal["active", "expired", "revoked"]


def timestamp(ts: float) -> str:
    """A key's time as every surface shows it: RFC 3339 in UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ApiKey:
    """What is known of a key besides its secret: who it is for, what it may do, until when."""

    id: str
    name: str
    roles: tuple[str, ...]
    service: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def state(self, now: float) -> State:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The key as listings show it (never its secret or hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "service": self.service,
            "created_at": timestamp(self.created_at),
            "expires_at": None if self.expires_at is None else timestamp(self.expires_at),
            "revoked_at": None if self.revoked_at is None else timestamp(self.revoked_at),
            "state": self.state(time.time() if now is None else now),
        }


@dataclass(frozen=True)
class StoredKey:
    """A key as a backend keeps it: its description and the SHA-256 (hex) of its secret."""

    key: ApiKey
    secret_sha256: str

    def to_record(self) -> dict[str, Any]:
        k = self.key
        return {
            "id": k.id,
            "name": k.name,
            "roles": list(k.roles),
            "service": k.service,
            "created_at": k.created_at,
            "expires_at": k.expires_at,
            "revoked_at": k.revoked_at,
            "secret_sha256": self.secret_sha256,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> StoredKey:
        return cls(
            ApiKey(
                id=str(r["id"]),
                name=str(r["name"]),
                roles=tuple(str(x) for x in r["roles"]),
                service=r.get("service"),
                created_at=float(r["created_at"]),
                expires_at=None if r.get("expires_at") is None else float(r["expires_at"]),
                revoked_at=None if r.get("revoked_at") is None else float(r["revoked_at"]),
            ),
            str(r["secret_sha256"]),
        )


class KeyBackend(Protocol):
    """Where keys are kept: rows by id, each write atomic."""

    async def insert(self, stored: StoredKey, now: float) -> ApiKey | None:
        """Add `stored` unless a key of the same name is active at `now`; that key if so."""
        ...

    async def get(self, key_id: str) -> StoredKey | None: ...

    async def all(self) -> builtins.list[StoredKey]: ...

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        """Mark the key revoked at `at` (a revoked key keeps its first time); None if unknown."""
        ...

    async def close(self) -> None: ...


class KeyStore(Protocol):
    """API keys: create (the key shown once), list, revoke, and verify a presented key."""

    async def create(
        self,
        name: str,
        roles: Sequence[str],
        *,
        expires_at: float | None = None,
        service: str | None = None,
    ) -> tuple[str, ApiKey]: ...

    async def list(self) -> builtins.list[ApiKey]: ...

    async def revoke(self, key_id: str) -> ApiKey | None: ...

    async def verify(self, token: str) -> Principal: ...

    async def close(self) -> None: ...


def is_api_key(token: str) -> bool:
    """Whether a bearer token is an API key rather than a JWT (which starts `eyJ`)."""
    return token.startswith(KEY_PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_key_fields(
    name: str, roles: Sequence[str], service: str | None, expires_at: float | None, now: float
) -> None:
    """InvalidArguments naming the first field a new key cannot have."""
    if not re.match(NAME, name):
        raise InvalidArguments(
            f"key name {name!r}: 1 to 128 of A-Z a-z 0-9 _ . @ : + -, starting with a letter "
            "or digit"
        )
    for role in roles:
        if not re.match(ROLE_NAME, role):
            raise InvalidArguments(f"role name {role!r}: 1 to 64 of A-Z a-z 0-9 _ . : -")
    if not roles and service is None:
        raise InvalidArguments("a key needs at least one role (or a service it is for)")
    if service is not None and not re.match(SERVICE_NAME, service):
        raise InvalidArguments(f"service name {service!r}: 1 to 64 of A-Z a-z 0-9 _ . -")
    if expires_at is not None and expires_at <= now:
        raise InvalidArguments(f"expiry {timestamp(expires_at)} is not in the future")


def parse_time(text: str) -> float:
    """An RFC 3339 time (`2027-01-01T00:00:00Z`) or a date (`2027-01-01`, midnight UTC) as
    epoch seconds; a time without an offset is taken as UTC. ValueError otherwise."""
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_expires(text: str, now: float) -> float:
    """`--expires`: a duration from `now` (`90s`, `30m`, `12h`, `30d`, `2w`) or a time
    (`parse_time`); InvalidArguments with the accepted forms otherwise."""
    m = _DURATION.match(text.strip().lower())
    if m:
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise InvalidArguments(f"expiry {text!r} is not in the future")
        return now + seconds
    try:
        when = parse_time(text)
    except ValueError:
        raise InvalidArguments(
            f"expiry {text!r} is neither a duration (90s, 30m, 12h, 30d, 2w) nor a time "
            "(2027-01-01T00:00:00Z, 2027-01-01)"
        ) from None
    if when <= now:
        raise InvalidArguments(f"expiry {timestamp(when)} is not in the future")
    return when


class Keys:
    """The KeyStore on a backend: makes keys, checks presented ones against the backend, and
    remembers what it looked up for `cache_s` seconds (at most `cache_size` keys)."""

    def __init__(
        self,
        backend: KeyBackend,
        *,
        clock: Callable[[], float] = time.time,
        ticks: Callable[[], float] = time.monotonic,
        cache_s: float = CACHE_S,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.backend = backend
        self._clock = clock  # wall-clock seconds: created/expires/revoked outlive the process
        self._ticks = ticks
        self.cache_s = cache_s
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[StoredKey, float]] = OrderedDict()

    async def create(
        self,
        name: str,
        roles: Sequence[str],
        *,
        expires_at: float | None = None,
        service: str | None = None,
    ) -> tuple[str, ApiKey]:
        now = self._clock()
        roles = tuple(dict.fromkeys(roles))  # order kept, repeats dropped
        check_key_fields(name, roles, service, expires_at, now)
        key_id = "".join(secrets.choice(_ID_CHARS) for _ in range(_ID_LEN))
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        key = ApiKey(key_id, name, roles, service, now, expires_at)
        clash = await self.backend.insert(StoredKey(key, _digest(secret)), now)
        if clash is not None:
            raise Conflict(
                f"an active key named {name!r} exists ({clash.id}); key names are the names "
                "requests run as, so each must be unique: revoke it first or pick another name"
            )
        return f"{KEY_PREFIX}{key_id}_{secret}", key

    async def list(self) -> builtins.list[ApiKey]:
        rows = await self.backend.all()
        return sorted((r.key for r in rows), key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str) -> ApiKey | None:
        self._cache.pop(key_id, None)
        return await self.backend.revoke(key_id, self._clock())

    async def verify(self, token: str) -> Principal:
        m = _TOKEN.match(token)
        if m is None:
            raise Unauthenticated(
                "malformed API key: expected mgk_<id>_<secret> as `meshgate keys create` "
                "printed it (12 letters or digits, then 43 base64url characters)"
            )
        key_id, secret = m.groups()
        stored = self._cached(key_id)
        if stored is None:
            stored = await self.backend.get(key_id)
            if stored is None:
                raise Unauthenticated(f"unknown API key {key_id}")
            self._remember(key_id, stored)
        # Only the holder of the secret learns whether a key was revoked or has expired.
        if not hmac.compare_digest(stored.secret_sha256, _digest(secret)):
            raise Unauthenticated(f"unknown API key {key_id}")
        key = stored.key
        if key.revoked_at is not None:
            raise Unauthenticated(
                f"API key {key_id} ({key.name}) was revoked at {timestamp(key.revoked_at)}"
            )
        if key.expires_at is not None and key.expires_at <= self._clock():
            raise Unauthenticated(
                f"API key {key_id} ({key.name}) expired at {timestamp(key.expires_at)}"
            )
        return Principal(
            name=key.name,
            roles=frozenset(key.roles),
            via="key",
            service=key.service,
            expires_at=key.expires_at,
        )

    def _cached(self, key_id: str) -> StoredKey | None:
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        stored, at = entry
        if self._ticks() - at >= self.cache_s:
            del self._cache[key_id]
            return None
        self._cache.move_to_end(key_id)
        return stored

    def _remember(self, key_id: str, stored: StoredKey) -> None:
        if self.cache_s <= 0:
            return
        self._cache[key_id] = (stored, self._ticks())
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def close(self) -> None:
        self._cache.clear()
        await self.backend.close()


def keys_path(settings: Settings) -> Path | None:
    """The SQLite file of API keys (None: Redis keeps them, or the data dir is in memory)."""
    if is_redis_url(settings.mesh.registry) or settings.data_dir is None:
        return None
    return settings.data_dir / "keys.sqlite3"


def open_key_store(settings: Settings) -> Keys:
    """The key store where the settings keep shared state: the Redis registry's server, else
    `keys.sqlite3` in the data dir (in memory without one)."""
    from meshgate.security.keystores import RedisKeys, SqliteKeys

    backend: KeyBackend
    if is_redis_url(settings.mesh.registry):
        url = settings.mesh.registry
        backend = RedisKeys(url, options=redis_options(url, settings.mesh))
    else:
        backend = SqliteKeys(keys_path(settings))
    return Keys(backend)
