"""The autoscaler of one pool: how many instances it should run, from what its load looks like.

A pool with `instances = {min, max}` samples its load every `interval_s` (`Load`) and asks
`Autoscaler.decide`. The pool is *busy* when calls in flight per ready instance are over
`scale_up_in_flight`, or calls have waited for a free instance for `scale_up_queue_wait_s`
without a break, or (when set) the mean latency of busy instances is over
`scale_up_latency_s`. Busy for `scale_up_after_s` grows the pool to what the load needs (at
least one more, at most `max`); then the next step waits another window, so that new
instances get the time to start. When the load fits on fewer instances for
`scale_down_after_s`, the pool shrinks to the most it needed during that cool-down (never
below `min`); `min = 0` reaches zero only after a cool-down without a single call. A call that
finds a pool at zero asks for an instance at once (`demand`).

Nothing here sleeps or starts processes: time comes from injected clocks and the pool carries
out each `Decision` (it starts slots, or drains and stops them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from meshgate.config import InstanceBounds, ServerPolicy
from meshgate.resilience import Clock

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class Load:
    """One sample of a pool's load."""

    instances: int
    """Instances the pool runs or starts (not those draining)."""
    ready: int
    """Of those, the ones taking calls."""
    in_flight: int
    """Calls in flight on the pool's instances."""
    queued: int = 0
    """Calls waiting for a free instance."""
    queued_for_s: float = 0.0
    """How long calls have been waiting without a break."""
    latency_s: float | None = None
    """The mean latency of the instances with calls in flight (None: none has)."""


@dataclass(frozen=True)
class Decision:
    """One change of the number of instances a pool should run, and why."""

    service: str
    before: int
    after: int
    reason: str
    """`in_flight`, `queue_wait`, `latency`, `demand` (up); `underused`, `idle` (down)."""
    why: str
    at: float
    """Wall-clock time, seconds since the epoch."""

    @property
    def direction(self) -> str:
        return UP if self.after > self.before else DOWN

    def line(self) -> str:
        """The decision as its log line says it."""
        return f"{self.service}: scaling {self.before} -> {self.after} ({self.why})"

    def view(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.before,
            "to": self.after,
            "direction": self.direction,
            "reason": self.reason,
            "why": self.why,
        }


class Autoscaler:
    """Decides a pool's desired number of instances; pure but for the clocks it is given."""

    def __init__(
        self,
        service: str,
        policy: ServerPolicy,
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.service = service
        self.bounds: InstanceBounds = policy.instances
        self.settings = policy.autoscale
        self.in_flight_target = policy.scale_up_in_flight
        self.clock = clock
        self.wall = wall
        # A pool that may scale to zero still starts one instance, to learn its catalog.
        self.desired = max(self.bounds.min, 1)
        self.last: Decision | None = None
        self._busy_since: float | None = None
        self._spare_since: float | None = None
        self._needed_in_cool_down = 0

    @property
    def scales(self) -> bool:
        return self.bounds.scales

    def view(self) -> dict[str, Any]:
        """What `/api/v1/mcp/servers` shows of the pool's scaling."""
        return {
            "min": self.bounds.min,
            "max": self.bounds.max,
            "desired": self.desired,
            "last_decision": self.last.view() if self.last is not None else None,
        }

    def needed(self, load: Load) -> int:
        """Instances that would carry the load (calls in flight and waiting) at the target."""
        calls = load.in_flight + load.queued
        return math.ceil(calls / self.in_flight_target) if calls else 0

    def busy(self, load: Load) -> tuple[str, str] | None:
        """Why the pool is busy, as (reason, words); None when it is not."""
        s = self.settings
        if load.ready and load.in_flight / load.ready > self.in_flight_target:
            per = load.in_flight / load.ready
            return (
                "in_flight",
                f"{per:.2f} calls in flight per instance > {self.in_flight_target:g}",
            )
        if load.queued and load.queued_for_s >= s.scale_up_queue_wait_s:
            return (
                "queue_wait",
                f"{load.queued} calls waiting for an instance for {load.queued_for_s:.2f}s",
            )
        target = s.scale_up_latency_s
        if target is not None and load.latency_s is not None and load.latency_s > target:
            return "latency", f"latency {load.latency_s:.3f}s > {target:g}s"
        return None

    def decide(self, load: Load) -> Decision | None:
        """Take one sample of the load; a Decision when the desired number changes."""
        now = self.clock()
        n = self.desired
        needed = self.needed(load)
        busy = self.busy(load)
        if busy is not None:
            self._spare_since = None
            if self._busy_since is None:
                self._busy_since = now
            held = now - self._busy_since
            if n >= self.bounds.max or held < self.settings.scale_up_after_s:
                return None
            self._busy_since = now  # the next step waits a window for these to start
            reason, words = busy
            return self._set(
                max(n + 1, min(needed, self.bounds.max)), reason, f"{words} for {held:.2f}s"
            )
        self._busy_since = None
        if n <= self.bounds.min or needed >= n:
            self._spare_since = None
            return None
        if self._spare_since is None:
            self._spare_since, self._needed_in_cool_down = now, needed
        self._needed_in_cool_down = max(self._needed_in_cool_down, needed)
        idle_for = now - self._spare_since
        if idle_for < self.settings.scale_down_after_s:
            return None
        self._spare_since = None
        after = max(self.bounds.min, self._needed_in_cool_down)
        if self._needed_in_cool_down == 0:
            return self._set(after, "idle", f"no calls for {idle_for:.2f}s")
        return self._set(
            after,
            "underused",
            f"the load fitted on {self._needed_in_cool_down} for {idle_for:.2f}s",
        )

    def demand(self) -> Decision | None:
        """A call found the pool at zero instances: one is wanted now, not after a window."""
        if self.desired > 0:
            return None
        self._spare_since = self._busy_since = None
        return self._set(1, "demand", "a call arrived with no instance running")

    def _set(self, after: int, reason: str, why: str) -> Decision:
        after = max(self.bounds.min, min(self.bounds.max, after))
        decision = Decision(self.service, self.desired, after, reason, why, self.wall())
        self.desired = after
        self.last = decision
        return decision
