"""Where API keys are kept: an SQLite file (one gateway, and `meshgate keys` beside it) or a
Redis hash (every gateway of a Redis registry). Both keep the secret's SHA-256, never a key."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from meshgate.config.redis import redis_client
from meshgate.errors import Unavailable
from meshgate.security.keys import ApiKey, StoredKey
from meshgate.storage import open_sqlite
from meshgate.urls import redact_url

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    service TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    secret_sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys(name);
"""

_COLUMNS = "id, name, roles, service, created_at, expires_at, revoked_at, secret_sha256"


def _row(r: tuple[Any, ...]) -> StoredKey:
    return StoredKey.from_record(
        dict(zip(_COLUMNS.split(", "), (*r[:2], json.loads(r[2]), *r[3:]), strict=True))
    )


class SqliteKeys:
    """Keys in an SQLite file in WAL mode: the gateway reads while `meshgate keys` writes.
    Every call runs in a worker thread: a write waits (up to 5 s) while another process
    holds the file's write lock, and the event loop must not wait with it."""

    def __init__(self, path: str | Path | None) -> None:
        """`path` None keeps them in memory only (tests, `--data-dir ''`)."""
        self._lock = threading.Lock()
        self.path, self._db = open_sqlite(path, SCHEMA)

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full...
            raise Unavailable(f"the API key database {self.path}: {e}") from None

    async def insert(self, stored: StoredKey, now: float) -> ApiKey | None:
        k = stored.key

        def insert() -> ApiKey | None:
            # IMMEDIATE: the name check and the insert hold the write lock together, so two
            # writers (a gateway and `meshgate keys`) cannot both create the same name.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                clash = self._db.execute(
                    f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > ?) LIMIT 1",
                    (k.name, now),
                ).fetchone()
                if clash is None:
                    self._db.execute(
                        f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            k.id,
                            k.name,
                            json.dumps(list(k.roles)),
                            k.service,
                            k.created_at,
                            k.expires_at,
                            None,
                            stored.secret_sha256,
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return None if clash is None else _row(clash).key

        return await self._run(insert)

    async def get(self, key_id: str) -> StoredKey | None:
        def get() -> StoredKey | None:
            r = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            return None if r is None else _row(r)

        return await self._run(get)

    async def all(self) -> list[StoredKey]:
        def all_() -> list[StoredKey]:
            return [_row(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM api_keys")]

        return await self._run(all_)

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        def revoke() -> ApiKey | None:
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
            r = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            return None if r is None else _row(r).key

        return await self._run(revoke)

    async def close(self) -> None:
        await self._run(self._db.close)


HASH = "meshgate:keys"
"""The Redis hash of every key: field = key id, value = the stored record as JSON."""


class RedisKeys:
    """Keys in one Redis hash, shared by every gateway of a Redis registry; each change is a
    transaction on the hash (WATCH/MULTI), so concurrent writers cannot lose one another's."""

    def __init__(self, url: str, *, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self._client: aioredis.Redis = redis_client(
            url,
            options=options,  # the CA bundle of a TLS URL
            socket_timeout=5,
            socket_connect_timeout=5,
            decode_responses=True,
        )

    def _unreachable(self, e: Exception) -> Unavailable:
        return Unavailable(f"the API key store at {redact_url(self.url)} is unreachable: {e}")

    async def insert(self, stored: StoredKey, now: float) -> ApiKey | None:
        k = stored.key
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(HASH)
                        for raw in await pipe.hvals(HASH):
                            other = StoredKey.from_record(json.loads(raw)).key
                            if other.name == k.name and other.state(now) == "active":
                                return other
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.hset(HASH, k.id, json.dumps(stored.to_record()))
                        await pipe.execute()
                        return None
                    except WatchError:  # another writer changed the hash: look again
                        continue
        except (RedisError, OSError) as e:
            raise self._unreachable(e) from None

    async def get(self, key_id: str) -> StoredKey | None:
        try:
            raw = await self._client.hget(HASH, key_id)
        except (RedisError, OSError) as e:
            raise self._unreachable(e) from None
        return None if raw is None else StoredKey.from_record(json.loads(raw))

    async def all(self) -> list[StoredKey]:
        try:
            values = await self._client.hvals(HASH)
        except (RedisError, OSError) as e:
            raise self._unreachable(e) from None
        return [StoredKey.from_record(json.loads(raw)) for raw in values]

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(HASH)
                        raw = await pipe.hget(HASH, key_id)
                        if raw is None:
                            return None
                        record = json.loads(raw)
                        if record.get("revoked_at") is not None:
                            return StoredKey.from_record(record).key
                        record["revoked_at"] = at
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.hset(HASH, key_id, json.dumps(record))
                        await pipe.execute()
                        return StoredKey.from_record(record).key
                    except WatchError:
                        continue
        except (RedisError, OSError) as e:
            raise self._unreachable(e) from None

    async def close(self) -> None:
        await self._client.aclose()
