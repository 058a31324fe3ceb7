"""API keys on both backends (an SQLite file, a real redis-server): made, verified, refused
with a clear reason, revoked, expired, shared between nodes, and never stored in plain text."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from meshgate.errors import Conflict, InvalidArguments, Unauthenticated, Unavailable
from meshgate.security.keys import Keys, is_api_key, timestamp
from meshgate.security.keystores import HASH, RedisKeys, SqliteKeys
from meshgate.testing.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

T0 = 1_900_000_000.0  # 2030-03-17T17:46:40Z


class Clock:
    """Wall-clock and monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0
        self.tick = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.tick += seconds


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the keys go: an SQLite file path, or a fresh redis-server's URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "keys.sqlite3")
        return
    server = RedisServer(tmp_path).start()
    try:
        yield server.url
    finally:
        server.stop()


def open_keys(where: str, clock: Clock, *, cache_s: float = 5.0, cache_size: int = 64) -> Keys:
    store = RedisKeys(where) if where.startswith("redis://") else SqliteKeys(where)
    return Keys(
        store,
        clock=lambda: clock.now,
        ticks=lambda: clock.tick,
        cache_s=cache_s,
        cache_size=cache_size,
    )


def raw_stored(where: str) -> str:
    """Everything the backend holds, as text, read around meshgate."""
    if where.startswith("redis://"):
        client = redis.Redis.from_url(where, decode_responses=True)
        try:
            return repr(client.hgetall(HASH))
        finally:
            client.close()
    with sqlite3.connect(where) as db:
        return repr(db.execute("SELECT * FROM api_keys").fetchall())


def test_a_key_is_made_verified_listed_and_revoked(backend: str) -> None:
    clock = Clock()

    async def main() -> None:
        keys = open_keys(backend, clock)
        token, key = await keys.create("ci-deploy", ["deployer", "reader", "deployer"])
        assert is_api_key(token) and not is_api_key("eyJhbGciOiJSUzI1NiJ9.e30.sig")
        assert token.startswith(f"mgk_{key.id}_") and len(key.id) == 12 and len(token) == 60
        assert key.roles == ("deployer", "reader")
        assert key.created_at == T0 and key.expires_at is None and key.revoked_at is None

        principal = await keys.verify(token)
        assert principal.name == "ci-deploy" and principal.via == "key"
        assert principal.roles == frozenset({"deployer", "reader"})
        assert principal.service is None and principal.expires_at is None

        listed = await keys.list()
        assert listed == [key]
        view = key.to_json(T0)
        assert view == {
            "id": key.id,
            "name": "ci-deploy",
            "roles": ["deployer", "reader"],
            "service": None,
            "created_at": "2030-03-17T17:46:40Z",
            "expires_at": None,
            "revoked_at": None,
            "state": "active",
        }

        clock.advance(1)
        revoked = await keys.revoke(key.id)
        assert revoked is not None and revoked.revoked_at == T0 + 1
        assert revoked.state(clock.now) == "revoked"
        with pytest.raises(Unauthenticated) as e:
            await keys.verify(token)
        assert e.value.detail == (
            f"API key {key.id} (ci-deploy) was revoked at {timestamp(T0 + 1)}"
        )
        clock.advance(1)
        again = await keys.revoke(key.id)
        assert again is not None and again.revoked_at == T0 + 1  # the first time stays
        assert await keys.revoke("nosuchkey000") is None
        await keys.close()

    run(main)


def test_each_refusal_says_why(backend: str) -> None:
    clock = Clock()

    async def main() -> None:
        keys = open_keys(backend, clock)
        token, key = await keys.create("short-lived", ["reader"], expires_at=T0 + 60)
        principal = await keys.verify(token)
        assert principal.expires_at == T0 + 60

        for bad in ("", "mgk_", "mgk_short_secret", token + "x", token[:-1], "Bearer " + token):
            with pytest.raises(Unauthenticated) as e:
                await keys.verify(bad)
            assert e.value.detail.startswith("malformed API key: expected mgk_<id>_<secret>")
            assert e.value.status == 401

        unknown = "mgk_AAAAAAAAAAAA_" + token[17:]
        with pytest.raises(Unauthenticated) as e:
            await keys.verify(unknown)
        assert e.value.detail == "unknown API key AAAAAAAAAAAA"

        # A wrong secret reads as an unknown key: it says nothing of the key it names.
        wrong = token[:17] + ("A" if token[17] != "A" else "B") + token[18:]
        with pytest.raises(Unauthenticated) as e:
            await keys.verify(wrong)
        assert e.value.detail == f"unknown API key {key.id}"

        clock.advance(60)
        with pytest.raises(Unauthenticated) as e:
            await keys.verify(token)
        assert e.value.detail == f"API key {key.id} (short-lived) expired at 2030-03-17T17:47:40Z"
        assert (await keys.list())[0].state(clock.now) == "expired"
        await keys.close()

    run(main)


def test_the_store_holds_a_hash_of_the_secret_never_the_key(backend: str) -> None:
    clock = Clock()

    async def main() -> None:
        keys = open_keys(backend, clock)
        token, key = await keys.create("alice", ["admin"])
        secret = token.removeprefix(f"mgk_{key.id}_")
        raw = raw_stored(backend)
        assert key.id in raw and "alice" in raw
        assert secret not in raw and token not in raw
        assert hashlib.sha256(secret.encode()).hexdigest() in raw
        assert "secret" not in str(key.to_json())
        await keys.close()

    run(main)


def test_names_are_unique_among_active_keys_and_fields_are_checked(backend: str) -> None:
    clock = Clock()

    async def main() -> None:
        keys = open_keys(backend, clock)
        _, first = await keys.create("alice", ["admin"])
        with pytest.raises(Conflict) as e:
            await keys.create("alice", ["reader"])
        assert e.value.status == 409
        assert f"an active key named 'alice' exists ({first.id})" in e.value.detail
        await keys.revoke(first.id)
        await keys.create("alice", ["reader"])  # the name is free once the old key is revoked

        await keys.create("bob", ["reader"], expires_at=T0 + 10)
        clock.advance(10)
        await keys.create("bob", ["reader"])  # ... or has expired

        cases: list[tuple[str, list[str], str]] = [
            ("two words", ["admin"], "key name 'two words'"),
            ("", ["admin"], "key name ''"),
            ("ok", ["no spaces"], "role name 'no spaces'"),
            ("ok", [], "a key needs at least one role"),
        ]
        for name, roles, message in cases:
            with pytest.raises(InvalidArguments) as bad:
                await keys.create(name, roles)
            assert message in bad.value.detail
        with pytest.raises(InvalidArguments, match="service name 'a/b'"):
            await keys.create("svc", [], service="a/b")
        with pytest.raises(InvalidArguments, match="is not in the future"):
            await keys.create("late", ["reader"], expires_at=clock.now)
        token, svc = await keys.create("billing-svc", [], service="billing")
        assert (await keys.verify(token)).service == "billing" and svc.roles == ()
        await keys.close()

    run(main)


def test_verify_caches_for_a_few_seconds_and_a_revoke_is_seen_within_them(backend: str) -> None:
    clock = Clock()

    async def main() -> None:
        node_a = open_keys(backend, clock, cache_s=5)
        node_b = open_keys(backend, clock, cache_s=5)
        token, key = await node_a.create("alice", ["admin"])
        assert (await node_b.verify(token)).name == "alice"  # made on A, seen on B

        await node_a.revoke(key.id)
        with pytest.raises(Unauthenticated, match="was revoked"):
            await node_a.verify(token)  # at once where it was revoked
        clock.advance(4.9)
        assert (await node_b.verify(token)).name == "alice"  # B's cached look-up
        clock.advance(0.1)
        with pytest.raises(Unauthenticated, match="was revoked"):
            await node_b.verify(token)  # within 5 s on every node
        await node_a.close()
        await node_b.close()

    run(main)


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        keys = open_keys(str(tmp_path / "keys.sqlite3"), clock, cache_size=2)
        tokens = [(await keys.create(f"k{i}", ["reader"]))[0] for i in range(5)]
        for token in tokens:
            await keys.verify(token)
        assert len(keys._cache) == 2
        assert list(keys._cache) == [tokens[3][4:16], tokens[4][4:16]]  # the latest kept
        await keys.close()

    run(main)


def test_two_nodes_on_one_redis_share_their_keys(redis_server: RedisServer) -> None:
    clock = Clock()

    async def main() -> None:
        node_a = open_keys(redis_server.url, clock)
        node_b = open_keys(redis_server.url, clock)
        token_a, key_a = await node_a.create("from-a", ["reader"])
        token_b, key_b = await node_b.create("from-b", ["writer"])
        assert {k.id for k in await node_a.list()} == {key_a.id, key_b.id}
        assert (await node_a.verify(token_b)).name == "from-b"
        assert (await node_b.verify(token_a)).name == "from-a"
        with pytest.raises(Conflict):
            await node_b.create("from-a", ["reader"])  # names are unique across nodes
        await node_b.revoke(key_a.id)
        assert [k.revoked_at for k in await node_a.list() if k.id == key_a.id] == [T0]
        await node_a.close()
        await node_b.close()

    run(main)


def test_an_sqlite_store_keeps_keys_across_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = str(tmp_path / "data" / "keys.sqlite3")

    async def main() -> None:
        first = open_keys(path, clock)
        token, _ = await first.create("alice", ["admin"])
        await first.close()
        second = open_keys(path, clock)
        assert (await second.verify(token)).name == "alice"
        await second.close()

    run(main)


def test_an_unreachable_redis_is_a_503_not_a_refusal(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    clock = Clock()

    async def main() -> None:
        keys = open_keys(server.url, clock, cache_s=0)
        token, _ = await keys.create("alice", ["admin"])
        server.stop()
        for attempt in (keys.verify(token), keys.list(), keys.create("bob", ["admin"])):
            with pytest.raises(Unavailable) as e:
                await attempt
            assert e.value.status == 503
            assert e.value.detail.startswith(f"the API key store at {server.url} is unreachable: ")
        await keys.close()

    try:
        run(main)
    finally:
        server.stop()
