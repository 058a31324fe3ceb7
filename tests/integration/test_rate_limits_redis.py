"""The Redis token bucket against a real redis-server: the same rules as in memory, one
bucket shared by two limiters (two nodes), keys that expire, and a Redis that is down."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from meshgate.security.limits import REDIS_PREFIX, Decision, RedisLimiter
from meshgate.testing.redis_server import RedisServer


async def _until_allowed(limiter: RedisLimiter, key: str, rate: float, burst: int) -> Decision:
    """Take again after each refusal's own retry_after, within a bounded deadline."""
    deadline = time.monotonic() + 10
    while True:
        d = await limiter.take(key, rate, burst)
        if d.allowed or time.monotonic() > deadline:
            return d
        await asyncio.sleep(d.retry_after_s)


def test_burst_refusal_cost_and_refill(redis_server: RedisServer) -> None:
    async def main() -> None:
        limiter = RedisLimiter(redis_server.url)
        try:
            decisions = [await limiter.take("k", 0.5, 3) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            assert [d.remaining for d in decisions] == [2, 1, 0, 0]
            refused = decisions[3]
            assert 0 < refused.retry_after_s <= 2.0  # one token comes back every 2 s
            assert 4.0 < refused.reset_s <= 6.0

            d = await limiter.take("c", 1.0, 10, cost=4)
            assert d.allowed and d.remaining == 6
            assert (await limiter.take("c", 1.0, 10, cost=4)).remaining == 2
            d = await limiter.take("c", 1.0, 10, cost=4)
            assert not d.allowed and d.remaining == 2 and 1.0 < d.retry_after_s <= 2.0

            for _ in range(2):  # a fast bucket: spent, then filled again by Redis's clock
                assert (await limiter.take("fast", 20.0, 2)).allowed
            assert not (await limiter.take("fast", 20.0, 2)).allowed
            assert (await _until_allowed(limiter, "fast", 20.0, 2)).allowed
        finally:
            await limiter.close()

    asyncio.run(main())


def test_two_nodes_share_one_bucket(redis_server: RedisServer) -> None:
    async def main() -> None:
        a, b = RedisLimiter(redis_server.url), RedisLimiter(redis_server.url)
        try:
            taken = []
            for i in range(6):
                node = a if i % 2 == 0 else b
                taken.append((await node.take("shared", 0.1, 5)).allowed)
            assert taken == [True] * 5 + [False]
            assert not (await a.take("shared", 0.1, 5)).allowed
            assert (await b.take("other", 0.1, 5)).allowed
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_bucket_full_again_leaves_no_key(redis_server: RedisServer) -> None:
    async def main() -> None:
        limiter = RedisLimiter(redis_server.url)
        client = aioredis.from_url(redis_server.url)
        try:
            await limiter.take("slow", 0.01, 2)
            ttl = await client.pttl(REDIS_PREFIX + "slow")
            assert 99_000 < ttl <= 100_000  # one token at 0.01/s: full again in 100 s
            for i in range(200):
                await limiter.take(f"many-{i}", 100.0, 1)  # each full again after 10 ms
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # Redis expires keys in its own time
                if await client.dbsize() <= 1:
                    break
                await asyncio.sleep(0.05)
            assert await client.keys(REDIS_PREFIX + "*") == [(REDIS_PREFIX + "slow").encode()]
        finally:
            await client.aclose()
            await limiter.close()

    asyncio.run(main())


def test_redis_down_fails_open_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path).start()

    async def main() -> None:
        now = [0.0]
        limiter = RedisLimiter(server.url, timeout_s=0.5, clock=lambda: now[0])
        closed = RedisLimiter(server.url, fail_open=False, timeout_s=0.5)
        try:
            assert (await limiter.take("k", 1.0, 1)).allowed
            assert not (await limiter.take("k", 1.0, 1)).allowed
            server.stop()
            with caplog.at_level(logging.WARNING, logger="meshgate.limits"):
                for _ in range(3):  # the limit is not enforced while Redis is away
                    d = await limiter.take("k", 1.0, 1)
                    assert d.allowed and d.retry_after_s == 0
                now[0] = 61.0
                await limiter.take("k", 1.0, 1)
                refused = await closed.take("k", 1.0, 1)
            assert not refused.allowed and refused.retry_after_s > 0
            assert limiter.failures == 4
            warnings = [r for r in caplog.records if r.name == "meshgate.limits"]
            # one line a minute for the open limiter, one for the closed one
            assert len(warnings) == 3
            assert "let through unlimited" in warnings[0].getMessage()
            assert "refused" in warnings[-1].getMessage()
        finally:
            await limiter.close()
            await closed.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
