"""The Redis task queue: tasks shared by several nodes through Redis Streams.

A task is a hash `meshgate:q:task:<id>`. A ready task is an entry in one of three streams, by
priority band (`ready:1` above 0, `ready:2` at 0, `ready:3` below 0), read by the consumer
group `workers` with each node as a consumer. Reading an entry is claiming the task; the entry
stays pending for that node until the task is final, and the node renews it (`XCLAIM ... JUSTID`
resets its idle time) every third of the lease. A node that dies stops renewing: once an
entry has been idle for a lease, any node takes it over with `XAUTOCLAIM` and runs the task
again. A retry waits in the sorted set `delayed` until its time, then goes back to a stream.

Every change of a task is one Lua script, so a task's hash, its status index (`st:<status>`,
sorted by id for cursor pagination) and its stream entry never disagree. Final tasks are kept in
`done` by finish time, which the sweep uses to forget them after the result TTL, and the oldest
beyond `max_kept`. The hash `waiting` counts queued tasks per target, for the per-target bound
on enqueue (the total is the size of `st:queued`). Changes are
published on `meshgate:q:events` (`done <id>`, `cancel <id>`) so that long polls wake up and a
cancelled task stops on whichever node runs it.

Durability is Redis's: with `appendonly yes` and `appendfsync always` an acknowledged task
survives a crash of Redis too; with the defaults, up to a second of writes can be lost. Keys are
computed inside the scripts, so Redis Cluster is not supported.

With encryption keys configured, a task's target, result, error and the questions and answers
of a running task are sealed (`meshgate.crypto`) before they reach Redis, and opened here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from meshgate.config.redis import redis_client
from meshgate.crypto import PLAIN, Cipher, Undecryptable
from meshgate.errors import QueueUnavailable
from meshgate.tasks.base import STATUSES, UNBOUNDED, Event, QueueBounds, queue_full, runnable
from meshgate.tasks.redis_scripts import REWRITE, SCRIPTS
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.tasks.redis")

PREFIX = "meshgate:q:"
GROUP = "workers"
_UNWAITED_S = 5.0  # how long enqueues stop waiting for replicas that did not answer
STREAMS = tuple(f"{PREFIX}ready:{band}" for band in (1, 2, 3))

_INT = ("priority", "max_attempts", "attempts")
_FLOAT = ("deadline_at", "created_at", "started_at", "finished_at")
_JSON = ("target", "result", "error")


def _open(cipher: Cipher, stored: str) -> Any:
    """A stored JSON field; one that cannot be decrypted is `{"undecryptable": why}`."""
    try:
        return cipher.open_json(stored)
    except Undecryptable as e:
        return {"undecryptable": e.detail}


def _decode(raw: Mapping[Any, Any] | list[Any], cipher: Cipher = PLAIN) -> dict[str, Any]:
    if isinstance(raw, list):  # HGETALL inside a script: a flat list
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    out: dict[str, Any] = {"id": raw["id"], "status": raw["status"]}
    for key in _INT:
        out[key] = int(raw.get(key) or 0)
    for key in _FLOAT:
        out[key] = float(raw[key]) if raw.get(key) else None
    for key in _JSON:
        out[key] = _open(cipher, raw[key]) if raw.get(key) else None
    out["idempotency_key"] = raw.get("idempotency_key")
    out["worker"] = raw.get("worker")
    asked = {k[4:]: _open(cipher, v) for k, v in raw.items() if k.startswith("ask:")}
    out["input_requests"] = asked or None
    return out


@contextlib.contextmanager
def _reachable(url: str) -> Any:
    try:
        yield
    except (RedisError, OSError) as e:
        raise QueueUnavailable(
            f"the task queue at {redact_url(url)} is unreachable: {type(e).__name__}: {e}"
        ) from None


class RedisQueue:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        bounds: QueueBounds = UNBOUNDED,
        options: Mapping[str, Any] | None = None,
        cipher: Cipher = PLAIN,
        wait_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.url = url
        self.bounds = bounds
        # With replicas that may be promoted (Sentinel), an enqueue is acknowledged once this
        # many replicas have it (WAIT), or after wait_ms: a failover then loses no task that
        # was acknowledged, unless every replica lagged that long. A primary left without
        # replicas (just after a failover) is not waited on for a while, or every enqueue
        # would take wait_ms.
        self._wait = (wait_replicas, wait_ms)
        self._unwaited_until = 0.0  # monotonic
        self.unreplicated = 0  # enqueues acknowledged before a replica had them
        self._cipher = cipher
        # Wall-clock seconds for retry delays and final times; leases are Redis's own idle time.
        self._clock = clock
        # A pooled connection that a Redis restart closed fails once; a fresh one is tried.
        # The command is sent again then, so every script is safe to run twice: a change
        # whose answer was lost with the connection is not made a second time.
        self._r = redis_client(
            url,
            options=options,  # for rediss://: the CA bundle
            socket_timeout=5,
            socket_connect_timeout=5,
            decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError],
        )
        self._scripts = {name: self._r.register_script(body) for name, body in SCRIPTS.items()}
        self._listeners: list[Event] = []
        self._events: asyncio.Task[None] | None = None
        self._closing = False
        self._rng = random.Random()
        self.connected = False
        self.last_error: str | None = None

    def subscribe(self, listener: Event) -> None:
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": redact_url(self.url),
            "connected": self.connected,
            "error": self.last_error,
            "unreplicated": self.unreplicated,
        }

    async def start(self) -> None:
        with contextlib.suppress(QueueUnavailable):  # the workers retry; /health says so
            with _reachable(self.url):
                await self._groups()
        self._events = asyncio.create_task(self._listen(), name="redis task events")

    async def close(self) -> None:
        self._closing = True
        if self._events is not None:
            # redis-py's pubsub can swallow a cancellation that lands inside a read; the
            # listener also stops at its next turn once `_closing` is set, so cancel again
            # until it has.
            while not self._events.done():
                self._events.cancel()
                await asyncio.wait({self._events}, timeout=0.2)
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
        with contextlib.suppress(RedisError, OSError):
            await self._r.aclose()

    async def _groups(self) -> None:
        for stream in STREAMS:
            try:
                await self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def _replicated(self, script: str, *args: Any) -> Any:
        """Run a script and WAIT, on one connection, for the replicas to have its writes."""
        replicas, ms = self._wait
        if not replicas or time.monotonic() < self._unwaited_until:
            return await self._run(script, *args)
        with _reachable(self.url):
            async with self._r.pipeline(transaction=False) as pipe:
                await self._scripts[script](args=[PREFIX, *args], client=pipe)
                pipe.wait(replicas, ms)
                result, acked = await pipe.execute()
        self.connected, self.last_error = True, None
        if int(acked) < replicas:
            self.unreplicated += 1
            self._unwaited_until = time.monotonic() + _UNWAITED_S
            log.warning(
                "a task was acknowledged before %d replica(s) had it; enqueues do not wait "
                "for replicas for %.0fs",
                replicas,
                _UNWAITED_S,
            )
        return result

    async def _run(self, script: str, *args: Any) -> Any:
        with _reachable(self.url):
            try:
                result = await self._scripts[script](args=[PREFIX, *args])
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self._groups()  # Redis lost its data (a restart without persistence)
                result = await self._scripts[script](args=[PREFIX, *args])
        self.connected, self.last_error = True, None
        return result

    async def _listen(self) -> None:
        attempt = 0
        while not self._closing:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(f"{PREFIX}events")
                self.connected, self.last_error, attempt = True, None, 0
                async for message in _messages(pubsub):
                    if self._closing:
                        return
                    kind, _, id_ = message.partition(" ")
                    for listener in self._listeners:
                        listener(kind, id_)
            except (RedisError, OSError) as e:
                if self.connected:
                    log.warning("redis task queue unreachable (%s); retrying", e)
                self.connected, self.last_error = False, f"{type(e).__name__}: {e}"
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            attempt = min(attempt + 1, 8)
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * self._rng.uniform(0.5, 1.0))

    # -- the TaskQueue protocol ------------------------------------------------------------------

    async def enqueue(
        self,
        target: dict[str, Any],
        target_name: str,
        *,
        priority: int,
        max_attempts: int,
        deadline_s: float | None,
        idempotency_key: str | None,
        owner: str | None = None,
    ) -> tuple[str, bool]:
        now = self._clock()
        id_, created = await self._replicated(
            "enqueue",
            f"t-{secrets.token_hex(8)}",
            idempotency_key or "",
            repr(now),
            self._cipher.seal_json(target),
            target_name,
            priority,
            max_attempts,
            repr(now + deadline_s) if deadline_s else "",
            owner or "",
            _bound(self.bounds.max_queued),
            _bound(self.bounds.max_queued_per_target),
        )
        if int(created) == -1:
            raise queue_full(self.bounds, None)
        if int(created) == -2:
            raise queue_full(self.bounds, target_name)
        return str(id_), bool(created)

    async def claim(
        self, worker: str, n: int, lease_s: float, skip: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        rows = await self._run("claim", worker, n, repr(self._clock()), int(lease_s * 1000))
        tasks = [_decode(row, self._cipher) for row in rows]
        return [t for t in tasks if await runnable(self, t)]

    async def extend(self, id_: str, worker: str, lease_s: float) -> None:
        await self._run("extend", id_, worker)

    async def finish(self, id_: str, status: str, *, result: Any = None, error: Any = None) -> bool:
        changed = await self._run(
            "finish",
            id_,
            status,
            repr(self._clock()),
            self._cipher.seal_json(result) if result is not None else "",
            self._cipher.seal_json(error) if error is not None else "",
        )
        return bool(changed)

    async def retry_later(self, id_: str, delay_s: float, error: Any) -> None:
        await self._run(
            "retry_later", id_, repr(self._clock() + delay_s), self._cipher.seal_json(error)
        )

    async def cancel(self, id_: str) -> str | None:
        before = await self._run("cancel", id_, repr(self._clock()))
        return str(before) if before else None

    async def requeue_own(self, worker: str) -> int:
        return int(await self._run("requeue_own", worker))

    async def retry_dead(self, id_: str) -> bool:
        return bool(await self._run("retry_dead", id_))

    async def ask_input(self, id_: str, key: str, request: dict[str, Any]) -> bool:
        sealed = self._cipher.seal_json(request)
        return bool(await self._run("ask_input", id_, key, sealed))

    async def answer_input(self, id_: str, responses: dict[str, Any]) -> int | None:
        seal = self._cipher.seal_json
        pairs = [part for k, v in responses.items() for part in (k, seal(v))]
        taken = int(await self._run("answer_input", id_, *pairs))
        return None if taken < 0 else taken

    async def take_input(self, id_: str, key: str) -> tuple[bool, Any]:
        value = await self._run("take_input", id_, key)
        return (True, self._cipher.open_json(value)) if value is not None else (False, None)

    async def get(self, id_: str) -> dict[str, Any] | None:
        with _reachable(self.url):
            raw = await self._r.hgetall(f"{PREFIX}task:{id_}")
        return _decode(raw, self._cipher) if raw else None

    async def list(
        self, status: str | None, after: str, limit: int, owner: str | None = None
    ) -> list[dict[str, Any]]:
        index = f"{PREFIX}ids"
        if owner is not None:
            index = f"{PREFIX}owner:{owner}"
        elif status is not None:
            index = f"{PREFIX}st:{status}"
        with _reachable(self.url):
            ids = cast(
                list[str],
                await self._r.zrangebylex(
                    index, f"({after}" if after else "-", "+", start=0, num=limit
                ),
            )
            async with self._r.pipeline(transaction=False) as pipe:
                for id_ in ids:
                    pipe.hgetall(f"{PREFIX}task:{id_}")
                rows = await pipe.execute()
        return [_decode(row, self._cipher) for row in rows if row]

    async def counts(self) -> dict[str, int]:
        with _reachable(self.url):
            async with self._r.pipeline(transaction=False) as pipe:
                for status in STATUSES:
                    pipe.zcard(f"{PREFIX}st:{status}")
                sizes = await pipe.execute()
        return {s: int(n) for s, n in zip(STATUSES, sizes, strict=True) if n}

    async def sweep(self, older_than_s: float) -> int:
        cutoff = repr(self._clock() - older_than_s)
        return int(await self._run("sweep", cutoff, _bound(self.bounds.max_kept)))

    async def reencrypt(self) -> tuple[int, int]:
        """Seal every task's data anew with the first key (clear data gets sealed): (tasks
        rewritten, tasks left as they were because a value could not be decrypted). A field
        that changed meanwhile is left as that change made it."""
        rewrite = self._r.register_script(REWRITE)
        done = failed = 0
        with _reachable(self.url):
            async for key in self._r.scan_iter(match=f"{PREFIX}task:*", count=500):
                raw = cast(dict[str, str], await self._r.hgetall(key))
                fields = [k for k in raw if k in _JSON or k.startswith(("ask:", "ans:"))]
                rotate = self._cipher.rotate
                try:
                    triples = [p for k in fields for p in (k, raw[k], rotate(raw[k]))]
                except Undecryptable:
                    failed += 1
                    continue
                if triples:
                    await rewrite(keys=[key], args=triples)
                done += 1
        return done, failed


async def _messages(pubsub: Any) -> AsyncIterator[str]:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
        if message is not None and message.get("type") == "message":
            yield str(message["data"])


def _bound(value: int | None) -> str:
    return "" if value is None else str(value)
