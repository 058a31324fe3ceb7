"""The token bucket (GCRA) in memory, with an injected clock, and its RateLimit headers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from meshgate.errors import ConfigError
from meshgate.security.limits import (
    Decision,
    MemoryLimiter,
    RedisLimiter,
    open_limiter,
    ratelimit_headers,
)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A coroutine test, run on its own event loop."""

    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@run
async def test_a_burst_is_taken_then_refused_with_the_time_to_wait() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    decisions = [await limiter.take("k", rate_per_s=2.0, burst=5) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[4].reset_s == pytest.approx(2.5)  # 5 tokens at 2/s
    refused = decisions[5]
    assert refused == Decision(False, 5, 0, pytest.approx(2.5), pytest.approx(0.5))  # type: ignore[arg-type]


@run
async def test_the_bucket_refills_over_time() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    for _ in range(5):
        assert (await limiter.take("k", 2.0, 5)).allowed
    assert not (await limiter.take("k", 2.0, 5)).allowed
    clock.now += 0.5  # one token back
    d = await limiter.take("k", 2.0, 5)
    assert d.allowed and d.remaining == 0
    assert not (await limiter.take("k", 2.0, 5)).allowed
    clock.now += 10  # long past full: a full burst again, never more
    results = [(await limiter.take("k", 2.0, 5)).allowed for _ in range(6)]
    assert results == [True] * 5 + [False]


@run
async def test_a_cost_takes_several_tokens() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    d = await limiter.take("k", 1.0, 10, cost=4)
    assert d.allowed and d.remaining == 6 and d.reset_s == pytest.approx(4)
    d = await limiter.take("k", 1.0, 10, cost=4)
    assert d.allowed and d.remaining == 2
    d = await limiter.take("k", 1.0, 10, cost=4)
    assert not d.allowed and d.remaining == 2 and d.retry_after_s == pytest.approx(2)
    assert (await limiter.take("k", 1.0, 10, cost=2)).allowed  # smaller calls still fit
    clock.now += 4
    assert (await limiter.take("k", 1.0, 10, cost=4)).allowed


@run
async def test_keys_are_separate_buckets() -> None:
    limiter = MemoryLimiter(clock=Clock())
    assert (await limiter.take("a", 1.0, 1)).allowed
    assert not (await limiter.take("a", 1.0, 1)).allowed
    assert (await limiter.take("b", 1.0, 1)).allowed


@run
async def test_memory_stays_bounded_over_many_keys() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock, max_keys=100)
    for i in range(10_000):
        await limiter.take(f"caller-{i}", 1.0, 3)
    assert len(limiter) == 100  # the least recently used went first
    newest = await limiter.take("caller-9999", 1.0, 3, cost=2)
    assert newest.allowed and newest.remaining == 0  # still tracked: 1 + 2 tokens taken
    assert (await limiter.take("caller-0", 1.0, 3, cost=3)).allowed  # forgotten: full again
    clock.now += 3  # every bucket full again: dropped, not kept
    await limiter.take("someone", 1.0, 3)
    assert len(limiter) == 1


@run
async def test_bad_arguments_are_refused() -> None:
    limiter = MemoryLimiter(clock=Clock())
    for rate, burst, cost in [(0.0, 1, 1), (-1.0, 1, 1), (1.0, 0, 1), (1.0, 2, 3), (1.0, 2, 0)]:
        with pytest.raises(ValueError, match="must be"):
            await limiter.take("k", rate, burst, cost)


@run
async def test_open_limiter_knows_its_urls() -> None:
    assert isinstance(open_limiter("embedded"), MemoryLimiter)
    redis = open_limiter("redis://127.0.0.1:1/0")
    assert isinstance(redis, RedisLimiter)
    await redis.close()
    with pytest.raises(ConfigError, match="embedded"):
        open_limiter("memcached://127.0.0.1")


def test_ratelimit_headers_follow_the_draft() -> None:
    d = Decision(True, 10, 7, 1.5, 0.0)
    assert ratelimit_headers("per-caller", d, 5.0, 10) == {
        "RateLimit-Policy": '"per-caller";q=10;w=2',
        "RateLimit": '"per-caller";r=7;t=2',
    }
    odd = ratelimit_headers('a"b\\c\u00e9', Decision(False, 1, 0, 0.0, 3.0), 0.1, 1)
    assert odd["RateLimit-Policy"] == '"a\\"b\\\\c?";q=1;w=10'
    assert odd["RateLimit"] == '"a\\"b\\\\c?";r=0;t=0'
