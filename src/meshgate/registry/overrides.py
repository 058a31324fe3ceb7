"""Run-time policy kept with the registry: the settings `POST /configure/...` changes (the
load-balancing strategy, the circuit breaker's threshold and recovery time), so that a restart
keeps them and, with a shared registry, every node follows them.

The embedded registry keeps them in its SQLite file (a table beside the registrations), the
Redis registry in one hash that every node reads at start and again whenever a node publishes
a change on the channel (and, after a lost connection, on reconnecting).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from redis.exceptions import RedisError

from meshgate.config.redis import is_redis_url, redis_client
from meshgate.errors import Unavailable
from meshgate.storage import open_sqlite

log = logging.getLogger("meshgate.registry.overrides")

KEY = "meshgate:policy"
CHANNEL = "meshgate:policy"
SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_overrides (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Changed = Callable[[dict[str, Any]], None]


class OverrideStore(Protocol):
    """Where run-time policy values live: name -> JSON value."""

    async def load(self) -> dict[str, Any]: ...

    async def save(self, values: Mapping[str, Any]) -> None:
        """Store these values (others stay); raises Unavailable (503) when it cannot."""
        ...

    async def watch(self, changed: Changed) -> None:
        """Call `changed` with every value whenever another node changes one (runs until
        cancelled; returns at once where no other node can)."""
        ...

    def close(self) -> None: ...


class SqliteOverrides:
    """The values in the embedded registry's SQLite file: one node's."""

    def __init__(self, path: str | Path | None) -> None:
        self._lock = threading.Lock()
        self.path, self._db = open_sqlite(path, SCHEMA)

    async def load(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM policy_overrides").fetchall()
        return {str(k): json.loads(v) for k, v in rows}

    async def save(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO policy_overrides (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    async def watch(self, changed: Changed) -> None:
        return None  # nobody else writes this file

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisOverrides:
    """The values in a hash of the shared Redis registry, changes announced on a channel."""

    def __init__(self, url: str, *, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self._rng = random.Random()

    def _client(self) -> Any:
        return redis_client(
            self.url,
            options=self.options,
            socket_timeout=5,
            socket_connect_timeout=5,
            decode_responses=True,
        )

    async def load(self) -> dict[str, Any]:
        client = self._client()
        try:
            raw = await client.hgetall(KEY)
        except (RedisError, OSError) as e:
            log.warning("run-time policy not read from Redis (%s); the configured one applies", e)
            return {}
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        return _decoded(raw)

    async def save(self, values: Mapping[str, Any]) -> None:
        client = self._client()
        try:
            await client.hset(KEY, mapping={k: json.dumps(v) for k, v in values.items()})
            await client.publish(CHANNEL, "changed")
        except (RedisError, OSError) as e:
            raise Unavailable(
                f"the shared registry cannot store the change ({type(e).__name__}); nothing "
                "changed, retry later",
                retry_after=1,
            ) from None
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def watch(self, changed: Changed) -> None:
        attempt = 0
        while True:
            client = self._client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                # Read after subscribing: a change published meanwhile is not missed.
                changed(_decoded(await client.hgetall(KEY)))
                attempt = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        changed(_decoded(await client.hgetall(KEY)))
            except (RedisError, OSError) as e:
                log.warning("run-time policy: Redis unreachable (%s); retrying", e)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                    await client.aclose()
            attempt = min(attempt + 1, 8)
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * self._rng.uniform(0.5, 1.0))

    def close(self) -> None:
        pass  # a client per use: nothing held open


def _decoded(raw: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            log.error("run-time policy %s in Redis is not JSON; ignored", key)
    return out


def open_overrides(
    registry: str, *, path: str | Path | None, redis_options: Mapping[str, Any] | None = None
) -> OverrideStore:
    """The store beside this registry backend: Redis for a Redis registry, else the SQLite
    file of the registrations (`path`; None keeps them in memory)."""
    if is_redis_url(registry):
        return RedisOverrides(registry, options=redis_options)
    return SqliteOverrides(path)
