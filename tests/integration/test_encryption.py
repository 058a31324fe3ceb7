"""Encryption at rest against real stores: SQLite files and a real redis-server.

Each test reads what the store holds (the SQLite file's bytes, the rows, Redis's keys) and
shows that the plaintext is not there, that reads give it back, that data written before a
key was configured still reads, that rotating keys keeps old records readable, and that a
record sealed with a key no longer configured is a clear error on that record alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis

from meshgate.crypto import MASK, PLAIN, SEALED, Cipher, Undecryptable, generate_key, mask
from meshgate.registry import InstanceRecord, InstanceState
from meshgate.registry.redis import RedisRegistry
from meshgate.registry.store import RegistrationStore
from meshgate.tasks import open_queue
from meshgate.tasks.base import TaskQueue
from meshgate.testing.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

SECRET_ARG = "argument-plaintext-7d1f"
SECRET_RESULT = "result-plaintext-93ab"
SECRET_ERROR = "error-plaintext-51c0"
SECRET_ASK = "question-plaintext-2e77"
SECRET_ANSWER = "answer-plaintext-a4d9"
TARGET = {"server": "s", "tool": "echo", "arguments": {"text": SECRET_ARG}}
KEY_A, KEY_B = generate_key(), generate_key()


class Store(Protocol):
    def queue(self, cipher: Cipher) -> TaskQueue: ...

    async def raw(self) -> bytes: ...


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def queue(self, cipher: Cipher) -> TaskQueue:
        return open_queue("embedded", self.path, cipher=cipher)

    async def raw(self) -> bytes:
        """Every byte SQLite keeps: the file and its write-ahead log."""
        out = b""
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            if p.exists():
                out += p.read_bytes()
        return out


class RedisStore:
    def __init__(self, server: RedisServer) -> None:
        self.url = server.url

    def queue(self, cipher: Cipher) -> TaskQueue:
        return open_queue(self.url, None, cipher=cipher)

    async def raw(self) -> bytes:
        """Every value of every key Redis holds (hashes, strings, sorted sets, streams)."""
        client = aioredis.from_url(self.url)
        out: list[Any] = []
        try:
            async for key in client.scan_iter(count=500):
                kind = await client.type(key)
                if kind == b"hash":
                    for k, v in (await client.hgetall(key)).items():
                        out += [k, v]
                elif kind == b"string":
                    out.append(await client.get(key) or b"")
                elif kind == b"zset":
                    out += list(await client.zrange(key, 0, -1))
                elif kind == b"stream":
                    out += [repr(e).encode() for e in await client.xrange(key) or []]
                out.append(key)
        finally:
            await client.aclose()
        return b"\n".join(v if isinstance(v, bytes) else repr(v).encode() for v in out)


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "embedded":
        yield SqliteStore(tmp_path / "tasks.sqlite3")
        return
    server = RedisServer(tmp_path).start()
    try:
        yield RedisStore(server)
    finally:
        server.stop()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def _enqueue(q: TaskQueue) -> str:
    id_, created = await q.enqueue(
        TARGET, "s", priority=0, max_attempts=3, deadline_s=None, idempotency_key=None
    )
    assert created
    return id_


async def _claim_one(q: TaskQueue) -> list[str]:
    return [t["id"] for t in await q.claim("w1", 10, 30.0)]


def test_task_data_is_sealed_at_rest_and_reads_back(store: Store) -> None:
    async def main() -> None:
        q = store.queue(Cipher([KEY_A]))
        await q.start()
        try:
            id_ = await _enqueue(q)
            [claimed] = await q.claim("w1", 1, 30.0)
            assert claimed["target"] == TARGET
            assert await q.ask_input(id_, "q1", {"message": SECRET_ASK})
            assert await q.answer_input(id_, {"q1": {"answer": SECRET_ANSWER}}) == 1
            raw = await store.raw()
            for secret in (SECRET_ARG, SECRET_ASK, SECRET_ANSWER):
                assert secret.encode() not in raw
            assert SEALED.encode() in raw  # sealed values, not missing ones
            assert await q.take_input(id_, "q1") == (True, {"answer": SECRET_ANSWER})
            await q.retry_later(id_, 0.0, {"detail": SECRET_ERROR})
            await q.claim("w1", 1, 30.0)
            assert await q.finish(id_, "succeeded", result={"text": SECRET_RESULT})
            raw = await store.raw()
            for secret in (SECRET_ARG, SECRET_RESULT, SECRET_ERROR):
                assert secret.encode() not in raw
            task = await q.get(id_)
            assert task is not None
            assert task["target"] == TARGET
            assert task["result"] == {"text": SECRET_RESULT}
            [listed] = await q.list(None, "", 10)
            assert listed["result"] == {"text": SECRET_RESULT}
        finally:
            await q.close()

    run(main)


def test_clear_data_reads_after_a_key_is_added_and_rotation_keeps_old_records(
    store: Store,
) -> None:
    async def main() -> None:
        q = store.queue(PLAIN)  # before encryption was turned on
        await q.start()
        clear = await _enqueue(q)
        await q.close()
        assert SECRET_ARG.encode() in await store.raw()

        q = store.queue(Cipher([KEY_A]))
        await q.start()
        old = await _enqueue(q)
        for id_ in (clear, old):
            task = await q.get(id_)
            assert task is not None and task["target"] == TARGET
        await q.close()

        # Rotation: the new key first, the old one still there; new data is sealed with B.
        q = store.queue(Cipher([KEY_B, KEY_A]))
        await q.start()
        new = await _enqueue(q)
        for id_ in (clear, old, new):
            task = await q.get(id_)
            assert task is not None and task["target"] == TARGET
        assert await q.reencrypt() == (3, 0)
        await q.close()
        assert SECRET_ARG.encode() not in await store.raw()

        q = store.queue(Cipher([KEY_B]))  # the old key retired after re-encrypting
        await q.start()
        try:
            assert sorted(await _claim_one(q)) == sorted([clear, old, new])
            for id_ in (clear, old, new):
                task = await q.get(id_)
                assert task is not None and task["target"] == TARGET
        finally:
            await q.close()

    run(main)


def test_a_record_sealed_with_a_missing_key_is_an_error_on_that_record(store: Store) -> None:
    async def main() -> None:
        q = store.queue(Cipher([KEY_A]))
        await q.start()
        lost = await _enqueue(q)
        await q.close()

        q = store.queue(Cipher([KEY_B]))  # KEY_A was dropped without re-encrypting
        await q.start()
        try:
            readable = await _enqueue(q)
            task = await q.get(lost)
            assert task is not None
            assert "not among the configured encryption keys" in task["target"]["undecryptable"]
            assert len(await q.list(None, "", 10)) == 2  # the other record reads on
            # A worker cannot run it: it is failed with the reason, the readable one runs.
            assert await _claim_one(q) == [readable]
            task = await q.get(lost)
            assert task is not None and task["status"] == "failed"
            assert "cannot be read" in task["error"]["detail"]
            assert await q.reencrypt() == (1, 1)
        finally:
            await q.close()

        q = store.queue(Cipher([KEY_B, KEY_A]))  # the key is back: retry runs it
        await q.start()
        try:
            assert await q.retry_dead(lost)
            [claimed] = await q.claim("w2", 1, 30.0)
            assert claimed["id"] == lost and claimed["target"] == TARGET
        finally:
            await q.close()

    run(main)


def _store_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


def test_secret_registration_metadata_is_sealed_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    body = {
        "name": "api",
        "url": "http://127.0.0.1:9",
        "metadata": {"secret_token": "token-plaintext-66f2", "region": "eu-west"},
    }
    clear = RegistrationStore(path)
    clear.put("api-0", "api", {**body, "metadata": {"secret_token": "old-plaintext-0b1e"}})
    clear.close()

    store = RegistrationStore(path, cipher=Cipher([KEY_A]))
    store.put("api-1", "api", body)
    raw = _store_bytes(path)
    assert b"token-plaintext-66f2" not in raw
    assert b"eu-west" in raw  # only secret_ keys are sealed
    [(row,)] = sqlite3.connect(path).execute("SELECT body FROM registrations WHERE id = 'api-1'")
    assert SEALED in row and "token-plaintext" not in row
    assert store.get("api-1") == body
    assert store.get("api-0") == {**body, "metadata": {"secret_token": "old-plaintext-0b1e"}}
    store.close()

    rotated = RegistrationStore(path, cipher=Cipher([KEY_B, KEY_A]))
    assert rotated.reencrypt() == (2, 0)
    rotated.close()
    assert b"old-plaintext-0b1e" not in _store_bytes(path)

    only_b = RegistrationStore(path, cipher=Cipher([KEY_B]))
    assert [b["metadata"]["secret_token"] for _, b, _ in only_b.all()] == [
        "old-plaintext-0b1e",
        "token-plaintext-66f2",
    ]
    only_b.close()

    # Keys lost: the registrations still load, the secret stays sealed (never shown).
    lost = RegistrationStore(path, cipher=Cipher([generate_key()]))
    loaded = lost.all()
    assert len(loaded) == 2
    sealed = loaded[1][1]["metadata"]
    assert sealed["region"] == "eu-west"
    assert sealed["secret_token"].startswith(SEALED)
    assert mask(sealed) == {"region": "eu-west", "secret_token": MASK}
    assert lost.reencrypt() == (0, 2)
    lost.close()


def test_secret_metadata_is_sealed_in_the_redis_registry(redis_server: RedisServer) -> None:
    secret = "registry-plaintext-c3d5"
    record = InstanceRecord(
        id="api-1",
        service="api",
        kind="http",
        node="n1",
        state=InstanceState.HEALTHY,
        metadata={"secret_token": secret, "tags": ["a"]},
    )

    async def main() -> None:
        writer = RedisRegistry(redis_server.url, node="n1", lease_s=5, cipher=Cipher([KEY_A]))
        reader = RedisRegistry(
            redis_server.url, node="n2", lease_s=5, cipher=Cipher([KEY_B, KEY_A])
        )
        keyless = RedisRegistry(redis_server.url, node="n3", lease_s=5)
        for r in (writer, reader, keyless):
            await r.start()
        try:
            writer.register(record)
            end = time.monotonic() + 10
            while len(reader.instances()) < 1 or len(keyless.instances()) < 1:
                assert time.monotonic() < end, "the other nodes never saw the record"
                await asyncio.sleep(0.02)
            client = aioredis.from_url(redis_server.url)
            try:
                raw = await client.get("meshgate:inst:n1:api-1")
            finally:
                await client.aclose()
            assert raw is not None and secret.encode() not in raw and SEALED.encode() in raw
            assert reader.instances()[0].metadata == record.metadata
            # A node without the key keeps the value sealed and goes on serving the record.
            [seen] = keyless.instances()
            assert seen.metadata["secret_token"].startswith(SEALED)
            assert seen.metadata["tags"] == ["a"]
        finally:
            for r in (writer, reader, keyless):
                await r.stop()

    run(main)


def test_cipher_refuses_malformed_keys_and_sealed_data_without_keys() -> None:
    from meshgate.errors import ConfigError

    with pytest.raises(ConfigError, match="encryption key 2 is not an encryption key"):
        Cipher([KEY_A, "not-a-key"])
    sealed = Cipher([KEY_A]).seal("x")
    with pytest.raises(Undecryptable, match="no encryption key is configured"):
        PLAIN.open(sealed)
    assert Cipher([KEY_A]).seal(sealed) == sealed  # never sealed twice
