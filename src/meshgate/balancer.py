"""Load-balancing strategies: pure functions of the candidates, no I/O.

Each balancer picks one of the candidates it is given; the router has already removed
instances that are unhealthy, open-circuited or at their in-flight limit. Balancers keep only
small state (a counter, weights, a cached hash ring) and are cheap enough for every call.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def latency_ewma(self) -> float: ...


C = TypeVar("C", bound=Candidate)

STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "least_connections",
    "weighted",
    "random",
    "consistent_hash",
    "ip_hash",
    "p2c",
)


class Balancer(Protocol):
    name: str

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C: ...


def _check(candidates: Sequence[C]) -> None:
    if not candidates:
        raise ValueError("no candidates to pick from")


class Ewma:
    """An exponentially weighted moving average (for latency)."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float = 0.2, value: float = 0.0) -> None:
        self.alpha = alpha
        self.value = value

    def update(self, sample: float) -> float:
        self.value = (
            sample if self.value == 0.0 else self.value + self.alpha * (sample - self.value)
        )
        return self.value


class RoundRobin:
    """Each candidate in turn; the list may change between calls."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        i = self._next % len(candidates)
        self._next = i + 1
        return candidates[i]


class LeastConnections:
    """The candidate with the fewest calls in flight; ties are taken in turn."""

    name = "least_connections"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        low = min(c.in_flight for c in candidates)
        tied = [c for c in candidates if c.in_flight == low]
        self._turn += 1
        return tied[self._turn % len(tied)]


class Weighted:
    """Smooth weighted round robin (as in nginx): over sum(weights) picks, exact shares."""

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        weights = [max(0, c.weight) for c in candidates]
        total = sum(weights)
        if total == 0:
            weights = [1] * len(candidates)
            total = len(candidates)
        ids = {c.id for c in candidates}
        if len(self._current) > len(ids) or any(i not in ids for i in self._current):
            self._current = {i: v for i, v in self._current.items() if i in ids}
        best_i = 0
        best_v = None
        for i, (c, w) in enumerate(zip(candidates, weights, strict=True)):
            v = self._current.get(c.id, 0) + w
            self._current[c.id] = v
            if best_v is None or v > best_v:
                best_i, best_v = i, v
        chosen = candidates[best_i]
        self._current[chosen.id] -= total
        return chosen


class Random:
    """Uniformly at random, or in proportion to weight when weights differ."""

    name = "random"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        weights = [max(0, c.weight) for c in candidates]
        if len(set(weights)) <= 1 or sum(weights) == 0:
            return candidates[self._rng.randrange(len(candidates))]
        return self._rng.choices(candidates, weights=weights)[0]


def _hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class ConsistentHash:
    """A hash ring with virtual nodes: one key maps to one candidate, and a change of
    candidates moves only the keys of the candidates that came or went."""

    name = "consistent_hash"
    VNODES = 100

    def __init__(self) -> None:
        self._signature: tuple[tuple[str, int], ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._fallback = RoundRobin()

    def _ring(self, candidates: Sequence[C]) -> None:
        signature = tuple(sorted((c.id, max(1, c.weight)) for c in candidates))
        if signature == self._signature:
            return
        ring = sorted(
            (_hash(f"{cid}#{v}"), cid)
            for cid, weight in signature
            for v in range(self.VNODES * weight)
        )
        self._signature = signature
        self._points = [p for p, _ in ring]
        self._owners = [o for _, o in ring]

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        if key is None:
            return self._fallback.pick(candidates)
        self._ring(candidates)
        i = bisect.bisect(self._points, _hash(key)) % len(self._points)
        owner = self._owners[i]
        for c in candidates:
            if c.id == owner:
                return c
        raise AssertionError("hash ring out of date")  # pragma: no cover


class PowerOfTwo:
    """Power of two choices: the cheaper of two random candidates.

    cost = (in_flight + 1) * max(latency_ewma, 1 microsecond); ties go to fewer in flight.
    """

    name = "p2c"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[C], key: str | None = None) -> C:
        _check(candidates)
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        ca = (a.in_flight + 1) * max(a.latency_ewma, 1e-6)
        cb = (b.in_flight + 1) * max(b.latency_ewma, 1e-6)
        if ca == cb:
            return a if a.in_flight <= b.in_flight else b
        return a if ca < cb else b


def make_balancer(strategy: str, *, rng: random.Random | None = None) -> Balancer:
    """The balancer for a strategy name (see STRATEGIES; `ip_hash` is `consistent_hash`)."""
    rng = rng or random.Random()
    if strategy == "round_robin":
        return RoundRobin()
    if strategy == "least_connections":
        return LeastConnections()
    if strategy == "weighted":
        return Weighted()
    if strategy == "random":
        return Random(rng)
    if strategy in ("consistent_hash", "ip_hash"):
        return ConsistentHash()
    if strategy == "p2c":
        return PowerOfTwo(rng)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


class LatencyTracked:
    """The latency average an instance keeps for `p2c` (and the views)."""

    def __init__(self) -> None:
        self._latency = Ewma(alpha=0.2)

    @property
    def latency_ewma(self) -> float:
        return self._latency.value

    def observe_latency(self, seconds: float) -> None:
        self._latency.update(seconds)
