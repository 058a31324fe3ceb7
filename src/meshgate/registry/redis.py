"""The Redis registry: one view of every node's instances, shared through a Redis server.

Each node writes its own instances as keys `meshgate:inst:<node>:<id>` holding the record as
JSON, with a lease (`PX`) it renews every third of the lease. A node that dies stops renewing
and its entries expire. Changes travel without polling: a node publishes each write on the
`meshgate:registry` channel, and expiries arrive as keyspace notifications
(`notify-keyspace-events Ex`, which the backend turns on; where the server refuses, a full
resync every lease stands in for them).

The view is local: reads (`get`, `instances`) never wait on Redis, and registrations go to the
view at once and to Redis in the background. When Redis is unreachable the view is served as
last known, `status()` says `stale`, and the backend reconnects with backoff; on reconnect it
resyncs the view and writes its own instances again.

With encryption keys configured, secret metadata (keys starting with `secret_`) is sealed in
Redis (`meshgate.crypto`) and opened in the view; a node without the key keeps such a value
sealed, and logs which record it could not open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from meshgate.config.redis import redis_client
from meshgate.crypto import PLAIN, Cipher
from meshgate.registry.base import InstanceRecord, InstanceState, Listener
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.registry.redis")

PREFIX = "meshgate:inst:"
CHANNEL = "meshgate:registry"


def _encode(record: InstanceRecord, cipher: Cipher = PLAIN) -> str:
    body = dataclasses.asdict(record)
    body["state"] = record.state.value
    body["metadata"] = cipher.seal_metadata(record.metadata)
    return json.dumps(body, separators=(",", ":"))


def _decode(raw: str | bytes, cipher: Cipher = PLAIN) -> InstanceRecord | None:
    try:
        body = json.loads(raw)
        body["state"] = InstanceState(body["state"])
        record = InstanceRecord(**body)
    except (ValueError, TypeError, KeyError):
        return None
    metadata, failed = cipher.open_metadata(record.metadata)
    if failed:
        log.error(
            "instance %s of node %s: metadata %s cannot be decrypted (encrypted with a key "
            "that is not configured); kept encrypted",
            record.id,
            record.node,
            ", ".join(failed),
        )
    return dataclasses.replace(record, metadata=metadata)


class RedisRegistry:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        node: str,
        lease_s: float = 15.0,
        options: Mapping[str, Any] | None = None,
        cipher: Cipher = PLAIN,
    ) -> None:
        self.url = url
        self.options = dict(options or {})  # for redis-py's from_url: TLS of rediss://
        self.cipher = cipher
        self.node = node
        self.lease_s = lease_s
        self.view: dict[str, InstanceRecord] = {}  # "<node>:<id>" -> record, every node
        self.own: dict[str, InstanceRecord] = {}  # id -> record, this node's
        self.connected = False
        self.last_error: str | None = None
        self.keyspace_events = False
        self._listeners: list[Listener] = []
        self._dirty: set[str] = set()  # own ids to write
        self._gone: set[str] = set()  # own ids to delete
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    # -- the Registry protocol (synchronous, on the local view) --------------------------------

    def register(self, record: InstanceRecord) -> None:
        key = f"{self.node}:{record.id}"
        previous = self.view.get(key)
        self.own[record.id] = record
        self.view[key] = record
        self._gone.discard(record.id)
        self._dirty.add(record.id)
        self._wake.set()
        self._emit(record, previous)

    def update(self, record: InstanceRecord) -> None:
        if record.id not in self.own:
            raise KeyError(f"instance {record.id!r} is not registered")
        self.register(record)

    def deregister(self, instance_id: str) -> None:
        previous = self.own.pop(instance_id, None)
        self.view.pop(f"{self.node}:{instance_id}", None)
        if previous is not None:
            self._dirty.discard(instance_id)
            self._gone.add(instance_id)
            self._wake.set()
            self._emit(dataclasses.replace(previous, state=InstanceState.STOPPED), previous)

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self.own.get(instance_id)

    def held_by(self, node: str, instance_id: str) -> InstanceRecord | None:
        return self.view.get(f"{node}:{instance_id}")

    def instances(self, service: str | None = None) -> list[InstanceRecord]:
        return [r for r in self.view.values() if service is None or r.service == service]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": redact_url(self.url),
            "status": "ok" if self.connected else "stale",
            "instances": len(self.view),
            "nodes": len({r.node for r in self.view.values()}),
            "keyspace_events": self.keyspace_events,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._listeners.clear()

    # -- the background link to Redis ----------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis registry")

    async def stop(self) -> None:
        """Remove this node's entries (a clean exit) and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            client = redis_client(
                self.url, options=self.options, socket_timeout=2, socket_connect_timeout=2
            )
            try:
                # Those deregistered but not yet deleted go too.
                keys = [f"{PREFIX}{self.node}:{id_}" for id_ in (*self.own, *self._gone)]
                if keys:
                    await client.delete(*keys)
                    await client.publish(CHANNEL, json.dumps({"node": self.node, "op": "left"}))
            finally:
                await client.aclose()

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = redis_client(
                self.url,
                options=self.options,
                socket_timeout=5,
                socket_connect_timeout=5,
                decode_responses=True,
            )
            try:
                await self._session(client)
            except (RedisError, OSError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if self.connected:
                    log.warning("redis registry unreachable (%s); serving the last view", e)
                self.connected = False
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            attempt = min(attempt + 1, 8)
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * self._rng.uniform(0.5, 1.0))

    async def _session(self, client: aioredis.Redis) -> None:
        await client.ping()
        try:
            await client.config_set("notify-keyspace-events", "Ex")
            self.keyspace_events = True
        except ResponseError as e:  # e.g. a managed Redis that forbids CONFIG
            self.keyspace_events = False
            log.info("keyspace notifications unavailable (%s); resyncing every lease", e)
        pubsub = client.pubsub()
        db = client.connection_pool.connection_kwargs.get("db", 0)
        await pubsub.subscribe(CHANNEL, f"__keyevent@{db}__:expired")
        try:
            self._dirty |= set(self.own)  # our instances, written anew
            await self._flush(client)
            await self._resync(client)
            self.connected, self.last_error = True, None
            log.info("redis registry connected to %s", redact_url(self.url))
            renew_at = time.monotonic() + self.lease_s / 3
            resync_at = time.monotonic() + self.lease_s
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                while message is not None:
                    await self._on_message(client, message)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                if self._dirty or self._gone:
                    await self._flush(client)
                now = time.monotonic()
                if now >= renew_at:
                    await self._renew(client)
                    renew_at = now + self.lease_s / 3
                if not self.keyspace_events and now >= resync_at:
                    await self._resync(client)
                    resync_at = now + self.lease_s
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _flush(self, client: aioredis.Redis) -> None:
        dirty, gone = set(self._dirty), set(self._gone)
        async with client.pipeline(transaction=False) as pipe:
            for id_ in dirty:
                record = self.own.get(id_)
                if record is not None:
                    key = f"{PREFIX}{self.node}:{id_}"
                    pipe.set(key, _encode(record, self.cipher), px=int(self.lease_s * 1000))
                    pipe.publish(CHANNEL, json.dumps({"op": "put", "key": key}))
            for id_ in gone:
                key = f"{PREFIX}{self.node}:{id_}"
                pipe.delete(key)
                pipe.publish(CHANNEL, json.dumps({"op": "del", "key": key}))
            await pipe.execute()
        self._dirty -= dirty
        self._gone -= gone

    async def _renew(self, client: aioredis.Redis) -> None:
        if not self.own:
            return
        async with client.pipeline(transaction=False) as pipe:
            for id_ in self.own:
                pipe.pexpire(f"{PREFIX}{self.node}:{id_}", int(self.lease_s * 1000))
            renewed = await pipe.execute()
        lost = [id_ for id_, ok in zip(self.own, renewed, strict=True) if not ok]
        if lost:  # expired meanwhile (a long pause): write them again
            self._dirty.update(lost)

    async def _resync(self, client: aioredis.Redis) -> None:
        """Rebuild the other nodes' part of the view from Redis."""
        keys = [k async for k in client.scan_iter(match=f"{PREFIX}*", count=500)]
        values = await client.mget(keys) if keys else []
        seen: dict[str, InstanceRecord] = {}
        for key, raw in zip(keys, values, strict=True):
            record = _decode(raw, self.cipher) if raw is not None else None
            if record is not None and record.node != self.node:
                seen[key.removeprefix(PREFIX)] = record
        for vkey in [k for k, r in self.view.items() if r.node != self.node and k not in seen]:
            self._drop(vkey)
        for vkey, record in seen.items():
            previous = self.view.get(vkey)
            if previous != record:
                self.view[vkey] = record
                self._emit(record, previous)

    async def _on_message(self, client: aioredis.Redis, message: dict[str, Any]) -> None:
        channel, data = message.get("channel"), message.get("data")
        if channel != CHANNEL:  # a keyspace event: an expired key's name
            if isinstance(data, str) and data.startswith(PREFIX):
                self._drop(data.removeprefix(PREFIX))
            return
        try:
            event = json.loads(data) if isinstance(data, str) else {}
        except ValueError:
            return
        key = event.get("key")
        if event.get("op") == "left":
            for vkey in [k for k, r in self.view.items() if r.node == event.get("node")]:
                self._drop(vkey)
        elif isinstance(key, str) and key.startswith(PREFIX):
            vkey = key.removeprefix(PREFIX)
            if event.get("op") == "del":
                self._drop(vkey)
            else:
                raw = await client.get(key)
                record = _decode(raw, self.cipher) if raw is not None else None
                if record is not None and record.node != self.node:
                    previous = self.view.get(vkey)
                    self.view[vkey] = record
                    if previous != record:
                        self._emit(record, previous)

    def _drop(self, vkey: str) -> None:
        previous = self.view.get(vkey)
        if previous is None or previous.node == self.node:
            return
        del self.view[vkey]
        self._emit(dataclasses.replace(previous, state=InstanceState.STOPPED), previous)

    def _emit(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        for listener in self._listeners:
            listener(record, previous)
