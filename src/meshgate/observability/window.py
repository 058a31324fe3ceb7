"""Calls per service over the last minutes, in process: counts, errors and latency quantiles
that an API can answer from (`GET /api/v1/mesh/v2/stats`) without a Prometheus server.

Time is cut into fixed buckets (`bucket_s` seconds each, `buckets` of them kept: 10 s x 30, five
minutes, by default). Each bucket holds its calls, its errors and a log-scale latency
histogram: 8 bins per power of two from 1 µs to 268 s, so a quantile read back is within
6.25 % of the true one, and the quantile of any span of buckets is the merge of their
histograms. A record is O(1) and keeps no per-call data. Memory is bounded by services x
buckets x bins: a bucket that had calls holds 226 counts (about 2 KB), one that had none
shares a single empty histogram.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any

from meshgate.observability.metrics import FAILED_OUTCOMES

SUB = 8
"""Bins per power of two: a bin is at most 1/8 of its lower bound wide."""
EDGES = [(0.5 + k / (2 * SUB)) * 2.0**e / 1e6 for e in range(1, 29) for k in range(SUB)] + [
    2.0**28 / 1e6
]
"""The bins' bounds in seconds, 1 µs to 2^28 µs: bin 0 is below the first, bin i in
[EDGES[i-1], EDGES[i]), the last one at or past 268 s."""
BINS = len(EDGES) + 1
MAX_SERVICES = 10_000
"""Series kept at most; calls are recorded only for services that exist, so this is a guard,
not a limit a mesh meets."""


def bin_of(seconds: float) -> int:
    """The histogram bin of a duration (`record` does this inline)."""
    return bisect_right(EDGES, seconds)


def bin_ms(b: int) -> float:
    """The value a bin stands for, in milliseconds: the middle of its range (the lower bound of
    the open-ended last bin, 0.5 µs for the first)."""
    if b == 0:
        return EDGES[0] / 2 * 1000
    if b >= len(EDGES):
        return EDGES[-1] * 1000
    return (EDGES[b - 1] + EDGES[b]) / 2 * 1000


def quantile_ms(hist: list[int], total: int, q: float) -> float | None:
    """The q-quantile (nearest rank) of a histogram of `total` durations, in ms; None if empty."""
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    return round(bin_ms(bisect_left(list(accumulate(hist)), rank)), 3)


class _Bucket:
    """One slot of a service's ring: the calls of the bucket `index` (start: index x bucket_s)."""

    __slots__ = ("calls", "errors", "hist", "index", "p95_calls", "p95_ms")

    def __init__(self) -> None:
        self.index = -1
        self.calls = 0
        self.errors = 0
        self.hist = _UNUSED
        self.p95_calls = -1
        self.p95_ms: float | None = None

    def reset(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.errors = 0
        self.hist = [0] * BINS

    def p95(self) -> float | None:
        """This bucket's p95, computed again only when it has had calls since (a closed bucket
        is read many times and never changes)."""
        if self.p95_calls != self.calls:
            self.p95_ms = quantile_ms(self.hist, self.calls, 0.95)
            self.p95_calls = self.calls
        return self.p95_ms


_UNUSED: list[int] = [0] * BINS  # the histogram of a slot never used: read, never written


class CallWindow:
    """Per-service rolling window of call outcomes: `record` on the call path, `summary` for
    the API. `clock` gives epoch seconds (injected by tests)."""

    def __init__(
        self,
        bucket_s: int = 10,
        buckets: int = 30,
        *,
        clock: Callable[[], float] = time.time,
        max_services: int = MAX_SERVICES,
    ) -> None:
        if bucket_s < 1 or buckets < 1:
            raise ValueError("bucket_s and buckets must be at least 1")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.span_s = bucket_s * buckets
        self.clock = clock
        self.max_services = max_services
        self.dropped = 0
        self._rings: dict[str, list[_Bucket]] = {}
        # The current bucket of each service that has one, and the epoch seconds the current
        # bucket covers: a record is then a clock read, two comparisons and one dict look-up.
        self._current: dict[str, _Bucket] = {}
        self._index = 0
        self._start = self._end = 0.0
        self.started = clock()
        self._roll(self.started)

    def _roll(self, now: float) -> None:
        self._index = int(now) // self.bucket_s
        self._start = float(self._index * self.bucket_s)
        self._end = self._start + self.bucket_s
        self._current = {}

    def record(self, service: str, outcome: str, seconds: float) -> None:
        """Count one call of `service` that ended with `outcome` after `seconds`."""
        now = self.clock()
        if not self._start <= now < self._end:  # a new bucket (or the clock was set back)
            self._roll(now)
        bucket = self._current.get(service)
        if bucket is None:
            bucket = self._open(service)
            if bucket is None:
                return
        bucket.calls += 1
        if outcome in FAILED_OUTCOMES:
            bucket.errors += 1
        bucket.hist[bisect_right(EDGES, seconds)] += 1

    def _open(self, service: str) -> _Bucket | None:
        """The current bucket of a service: its ring's slot, emptied if it held an older one."""
        ring = self._rings.get(service)
        if ring is None:
            if len(self._rings) >= self.max_services and not self.prune():
                self.dropped += 1
                return None
            ring = self._rings[service] = [_Bucket() for _ in range(self.buckets)]
        bucket = ring[self._index % self.buckets]
        if bucket.index != self._index:
            bucket.reset(self._index)
        self._current[service] = bucket
        return bucket

    def prune(self) -> int:
        """Forget the services with no call in the whole window; returns how many went."""
        oldest = int(self.clock()) // self.bucket_s - self.buckets + 1
        stale = [s for s, ring in self._rings.items() if max(b.index for b in ring) < oldest]
        for s in stale:
            del self._rings[s]
            self._current.pop(s, None)
        return len(stale)

    def services(self) -> list[str]:
        """The services with a series kept (a call in the window, or not pruned yet)."""
        return list(self._rings)

    def summary(self, window_s: int, names: Iterable[str] = ()) -> dict[str, Any]:
        """The last `window_s` seconds (rounded up to whole buckets, the current one last) of
        every service recorded, and of `names` with zeros when they had no call."""
        if not self.bucket_s <= window_s <= self.span_s:
            raise ValueError(f"window_s must be between {self.bucket_s} and {self.span_s}")
        now = self.clock()
        count = -(-window_s // self.bucket_s)
        first = int(now) // self.bucket_s - count + 1
        # The seconds the window has counted: from its oldest bucket's start (or from this
        # window's own start, when later) to now; at least 1 s, so a first call is no burst.
        covered = max(1.0, now - max(first * self.bucket_s, self.started))
        self.prune()
        services = {
            name: self._service(self._rings.get(name), first, count, covered)
            for name in sorted({*self._rings, *names})
        }
        return {
            "window_s": count * self.bucket_s,
            "bucket_s": self.bucket_s,
            "now": round(now, 3),
            "services": services,
        }

    def _service(
        self, ring: list[_Bucket] | None, first: int, count: int, covered: float
    ) -> dict[str, Any]:
        series: list[dict[str, Any]] = []
        hists: list[list[int]] = []
        calls = errors = 0
        for index in range(first, first + count):
            bucket = ring[index % self.buckets] if ring is not None else None
            if bucket is None or bucket.index != index:
                series.append({"t": index * self.bucket_s, "calls": 0, "errors": 0, "p95_ms": None})
                continue
            calls += bucket.calls
            errors += bucket.errors
            hists.append(bucket.hist)
            series.append(
                {
                    "t": index * self.bucket_s,
                    "calls": bucket.calls,
                    "errors": bucket.errors,
                    "p95_ms": bucket.p95(),
                }
            )
        merged = list(map(sum, zip(*hists, strict=True)))
        return {
            "calls": calls,
            "errors": errors,
            "calls_per_s": round(calls / covered, 3),
            "error_rate": round(errors / calls, 4) if calls else 0.0,
            "p50_ms": quantile_ms(merged, calls, 0.5),
            "p95_ms": quantile_ms(merged, calls, 0.95),
            "series": series,
        }
