"""Rate limits: token buckets kept by GCRA, in memory or shared through Redis.

A bucket holds at most `burst` tokens and gains `rate_per_s` tokens a second; a call takes
`cost` tokens or is refused. GCRA (the generic cell rate algorithm) keeps such a bucket as one
number per key, its theoretical arrival time (TAT): the moment the bucket would be full again.
With the emission interval T = 1/rate and the tolerance tau = T * burst, a call at `now` is
taken when `max(TAT, now) + T * cost - tau <= now`, and then TAT moves to `max(TAT, now) + T *
cost`. A key whose TAT has passed is a full bucket and needs no storage at all, which bounds
memory by the keys that are actually being limited.

The `limits` library offers fixed and moving windows only; a token bucket lets short bursts
through at full speed and still reports what the IETF RateLimit headers need (tokens left and
the time until the bucket is full), so the few lines of GCRA live here.

Two limiters share the `Limiter` protocol: `MemoryLimiter` (one gateway) and `RedisLimiter`
(every node of a mesh sharing one bucket per key; one Lua script, Redis's own clock). What a
Redis outage does is the constructor's choice; by default the limiter fails open, since a
limiter that cannot reach its store must not take the mesh down with it.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshgate.config.redis import is_redis_url, redis_client
from meshgate.errors import ConfigError
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.limits")

REDIS_PREFIX = "meshgate:rl:"
MAX_KEYS = 100_000  # per MemoryLimiter: beyond it the least recently used buckets are forgotten
_EPSILON = 1e-6  # float slack, so that 3 tokens taken 0.3 s apart do not count as 2.999…


@dataclass(frozen=True)
class Decision:
    """The answer to one `take`: whether the call may go, and the bucket as it now stands."""

    allowed: bool
    limit: int  # the burst: tokens in a full bucket
    remaining: int  # whole tokens left after this call
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # seconds until `cost` tokens are there (0 when allowed)


class Limiter(Protocol):
    """A store of token buckets, one per key."""

    async def take(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision: ...

    async def close(self) -> None: ...


def _check(rate_per_s: float, burst: int, cost: int) -> None:
    if not rate_per_s > 0 or math.isinf(rate_per_s):
        raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst!r}")
    if not 1 <= cost <= burst:
        raise ValueError(f"cost must be between 1 and the burst ({burst}), not {cost!r}")


def gcra(
    tat: float, now: float, rate_per_s: float, burst: int, cost: int
) -> tuple[Decision, float]:
    """One GCRA step: the decision, and the TAT to store (unchanged when refused)."""
    interval = 1.0 / rate_per_s
    tolerance = interval * burst
    base = max(tat, now)
    new_tat = base + interval * cost
    allow_at = new_tat - tolerance
    if allow_at > now + _EPSILON:
        remaining = math.floor((tolerance - (base - now)) / interval + _EPSILON)
        return Decision(False, burst, max(0, remaining), base - now, allow_at - now), tat
    remaining = math.floor((tolerance - (new_tat - now)) / interval + _EPSILON)
    return Decision(True, burst, max(0, remaining), new_tat - now, 0.0), new_tat


class MemoryLimiter:
    """Token buckets in this process: for one gateway, or limits meant per node."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.clock = clock
        self.max_keys = max_keys
        # key -> TAT, least recently taken first: full buckets are dropped from that end.
        self._tats: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def take(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        _check(rate_per_s, burst, cost)
        now = self.clock()
        self._drop_full(now)
        tat = self._tats.get(key, now)
        decision, new_tat = gcra(tat, now, rate_per_s, burst, cost)
        if decision.allowed:
            self._tats[key] = new_tat
            self._tats.move_to_end(key)
            while len(self._tats) > self.max_keys:
                # A forgotten bucket starts full again: a limit loosened for the least recently
                # seen key beats memory growing with every name a caller can make up.
                self._tats.popitem(last=False)
        return decision

    def _drop_full(self, now: float) -> None:
        # From the least recently taken end, while those buckets are full again: O(dropped + 1).
        while self._tats:
            key, tat = next(iter(self._tats.items()))
            if tat > now:
                return
            del self._tats[key]

    async def close(self) -> None:
        self._tats.clear()


# KEYS[1] the bucket; ARGV: interval (s), burst, cost. Redis's clock, so that nodes whose clocks
# disagree still share one bucket. Floats go back as strings: Redis would truncate Lua numbers.
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local base = math.max(tat, now)
local new_tat = base + interval * cost
local allow_at = new_tat - tolerance
-- slack for the microseconds TIME and the stored TAT are rounded to
local eps = 2e-6
if allow_at > now + eps then
  local remaining = math.floor((tolerance - (base - now)) / interval + 0.001)
  return {0, math.max(0, remaining), string.format('%.6f', base - now),
          string.format('%.6f', allow_at - now)}
end
local ttl_ms = math.max(1, math.ceil((new_tat - now) * 1000))
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', ttl_ms)
local remaining = math.floor((tolerance - (new_tat - now)) / interval + 0.001)
return {1, math.max(0, remaining), string.format('%.6f', new_tat - now), '0'}
"""


class RedisLimiter:
    """Token buckets in Redis, shared by every node: one atomic script per `take`."""

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        warn_every_s: float = 60.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.fail_open = fail_open
        self.clock = clock
        self.warn_every_s = warn_every_s
        self.failures = 0  # takes answered without Redis, for tests and status
        self._warned_at: float | None = None
        self._client: aioredis.Redis = redis_client(
            url, options=options, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script: Any = self._client.register_script(GCRA_LUA)

    async def take(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        _check(rate_per_s, burst, cost)
        try:
            # EVALSHA, loading the script again after a Redis restart (NOSCRIPT).
            reply = await self._script(
                keys=[REDIS_PREFIX + key], args=[repr(1.0 / rate_per_s), burst, cost]
            )
        except (RedisError, OSError) as e:
            return self._unreachable(e, burst, cost)
        allowed, remaining, reset_s, retry_s = reply
        return Decision(bool(int(allowed)), burst, int(remaining), float(reset_s), float(retry_s))

    def _unreachable(self, error: BaseException, burst: int, cost: int) -> Decision:
        self.failures += 1
        now = self.clock()
        if self._warned_at is None or now - self._warned_at >= self.warn_every_s:
            self._warned_at = now
            log.warning(
                "rate limiter: Redis at %s unreachable (%s: %s); calls are %s until it is back",
                redact_url(self.url),
                type(error).__name__,
                error,
                "let through unlimited" if self.fail_open else "refused",
            )
        if self.fail_open:
            return Decision(True, burst, burst - cost, 0.0, 0.0)
        return Decision(False, burst, 0, 1.0, 1.0)

    async def close(self) -> None:
        await self._client.aclose()


def open_limiter(
    url: str, *, fail_open: bool = True, options: Mapping[str, Any] | None = None
) -> Limiter:
    """The limiter a URL names: `embedded` (this process) or a Redis URL (`redis://`,
    `rediss://`, `redis+sentinel://`, `rediss+sentinel://`; `options`: its CA bundle)."""
    if url == "embedded":
        return MemoryLimiter()
    if is_redis_url(url):
        return RedisLimiter(url, fail_open=fail_open, options=options)
    raise ConfigError(
        f"rate limit store {redact_url(url)!r}: expected 'embedded' or a redis://, rediss:// "
        "or redis+sentinel:// URL"
    )


def _sf_string(value: str) -> str:
    # RFC 8941 sf-string: printable ASCII, with `"` and `\\` escaped.
    safe = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_headers(
    policy_name: str, d: Decision, rate_per_s: float, burst: int
) -> dict[str, str]:
    """The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-08 and later)
    for one decision: the policy as quota `q` over window `w` (the seconds a spent bucket takes
    to fill), and the tokens `r` left with the seconds `t` until the bucket is full."""
    name = _sf_string(policy_name)
    window = max(1, math.ceil(burst / rate_per_s - _EPSILON))
    reset = max(0, math.ceil(d.reset_s - _EPSILON))
    return {
        "RateLimit-Policy": f"{name};q={burst};w={window}",
        "RateLimit": f"{name};r={d.remaining};t={reset}",
    }
