"""Redis URLs and the one way an async client is made from them: a single server (`redis://`,
`rediss://`) or a primary found through Redis Sentinel (`redis+sentinel://`,
`rediss+sentinel://`).

The Sentinel form is the one the Redis-Sentinel-Url package defined and other clients follow:

    redis+sentinel://[[user]:password@]host1:port1[,host2:port2,...]/MASTER_NAME[/DB]

The hosts are the sentinels (port 26379 when left out); the password, if any, is the data
nodes' (primary and replicas). Sentinels that require a password of their own take it as
`?sentinel_password=...`. `rediss+sentinel://` speaks TLS to the sentinels and the data nodes
alike, with the CA bundle of `redis_ca_file`. The registry, the task queue, the rate-limit
store and the API key store all connect through `redis_client`, so each follows a failover
the same way: a connection that fails or finds its server demoted asks the sentinels for the
current primary before the next command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

PLAIN_SCHEMES = ("redis://", "rediss://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SCHEMES = PLAIN_SCHEMES + SENTINEL_SCHEMES
SENTINEL_PORT = 26379
_SENTINEL_QUERY = {"sentinel_password"}


class RedisUrlError(ValueError):
    """A Redis URL meshgate cannot use, with what is wrong with it."""


def is_redis_url(url: str) -> bool:
    """Whether `url` names a Redis server or a Sentinel-managed primary."""
    return url.startswith(SCHEMES)


@dataclass(frozen=True)
class SentinelTarget:
    """A `redis+sentinel://` URL taken apart."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, master name, database and credentials of a Sentinel URL; RedisUrlError
    names what is missing or malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or f"{scheme}://" not in SENTINEL_SCHEMES:
        raise RedisUrlError("expected redis+sentinel:// or rediss+sentinel://")
    parts = urlsplit(f"x://{rest}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for member in hosts.split(","):
        host, port = _host_port(member)
        sentinels.append((host, port))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise RedisUrlError("the master name is missing: redis+sentinel://HOST:PORT,.../MASTER")
    if len(path) > 2:
        raise RedisUrlError("the path is /MASTER_NAME or /MASTER_NAME/DB")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise RedisUrlError(f"database {path[1]!r} is not a number")
        db = int(path[1])
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - _SENTINEL_QUERY)
    if unknown:
        raise RedisUrlError(f"unknown option {unknown[0]!r}; only sentinel_password is read")
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password") or None,
        tls=scheme == "rediss+sentinel",
    )


def _host_port(member: str) -> tuple[str, int]:
    member = member.strip()
    if not member:
        raise RedisUrlError("a sentinel address is empty (hosts are separated by commas)")
    if member.startswith("["):  # [IPv6]:port
        host, _, tail = member[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = member.partition(":")
    if not host:
        raise RedisUrlError(f"sentinel {member!r} has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"sentinel {member!r}: the port is not a number from 1 to 65535")
    return host, int(port_text)


def check_redis_url(url: str) -> str:
    """`url` if meshgate can connect with it, else RedisUrlError (for settings validation)."""
    if url.startswith(SENTINEL_SCHEMES):
        parse_sentinel_url(url)
        return url
    if url.startswith(PLAIN_SCHEMES):
        return url
    raise RedisUrlError("expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://")


class _SentinelRedis(aioredis.Redis):
    """A client of the current primary that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def redis_client(
    url: str, *, options: Mapping[str, Any] | None = None, **kwargs: Any
) -> aioredis.Redis:
    """An async client for any of meshgate's Redis URLs. `options`: what `config.tls.
    redis_options` derived from the settings (the CA bundle of a TLS URL); `kwargs`: the
    caller's connection settings (timeouts, decoding, retries), as redis-py takes them."""
    extra = dict(options or {})
    if not url.startswith(SENTINEL_SCHEMES):
        return aioredis.from_url(url, **kwargs, **extra)
    target = parse_sentinel_url(url)
    tls: dict[str, Any] = {"ssl": True, **extra} if target.tls else {}
    timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels,
        sentinel_kwargs={**timeouts, **tls, "password": target.sentinel_password},
    )
    client = sentinel.master_for(
        target.master,
        redis_class=_SentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **tls,
        **kwargs,
    )
    assert isinstance(client, _SentinelRedis)
    return client
