"""The gate: the one place where a principal's action is allowed or refused.

The router asks it for every call it routes, whichever entry the call came by (REST, /mcp,
/sse, the proxy, task enqueue and execution); the mesh's own routes (register, tasks, keys)
ask it for their operations. It checks the policy (403), then the rate limits (429), and
writes one audit line for each refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshgate.config import LimitSettings
from meshgate.errors import Forbidden, RateLimited
from meshgate.observability.audit import audit
from meshgate.observability.metrics import count_rate_limited
from meshgate.security.limits import Limiter, MemoryLimiter, ratelimit_headers
from meshgate.security.policy import Action, Policy, Rule
from meshgate.security.principal import Principal


@dataclass(frozen=True)
class _Limit:
    """One `[[limits]]` table, its rule compiled."""

    name: str
    rule: Rule
    roles: frozenset[str]
    per: str
    rate_per_s: float
    burst: int

    def applies(self, principal: Principal, action: Action) -> bool:
        return self.rule.covers(action) and (not self.roles or bool(self.roles & principal.roles))

    def key(self, principal: Principal, action: Action) -> str:
        """The bucket this call takes from: per principal, per target, both, or one for all."""
        parts = [self.name]
        if "principal" in self.per:
            parts.append(f"{principal.via}:{principal.name}")
        if "target" in self.per:
            parts.append(action.target())
        return "|".join(parts)


class Gate:
    """Policy and rate limits for every action of every principal."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        limits: Sequence[LimitSettings] = (),
        limiter: Limiter | None = None,
    ) -> None:
        self.policy = policy or Policy({}, enabled=False)
        self.limits = [
            _Limit(
                lim.name,
                Rule.parse(lim.match),
                frozenset(lim.roles),
                lim.per,
                lim.rate_per_s,
                lim.burst,
            )
            for lim in limits
        ]
        self.limiter = limiter if limiter is not None or not self.limits else MemoryLimiter()

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    async def admit(self, principal: Principal, action: Action) -> None:
        """Raise Forbidden (403) unless the principal may take the action, and RateLimited
        (429) when a limit that applies to it is spent."""
        try:
            self.policy.check(principal, action)
        except Forbidden:
            audit("denied", principal=principal.name, outcome="denied", action=action.describe())
            raise
        # A call a peer node forwards spent the caller's limits where it first arrived.
        if self.limits and principal.via != "node":
            await self._limit(principal, action)

    async def _limit(self, principal: Principal, action: Action) -> None:
        assert self.limiter is not None
        for lim in self.limits:
            if not lim.applies(principal, action):
                continue
            d = await self.limiter.take(lim.key(principal, action), lim.rate_per_s, lim.burst)
            if d.allowed:
                continue
            count_rate_limited(lim.name)
            audit(
                "rate_limited",
                principal=principal.name,
                outcome="refused",
                action=action.describe(),
                limit=lim.name,
            )
            raise RateLimited(
                f"rate limit {lim.name!r} ({lim.rate_per_s:g}/s, burst {lim.burst}) is spent "
                f"for {action.describe()}; retry in {d.retry_after_s:.2f} s",
                retry_after=d.retry_after_s,
                extra={"limit": lim.name},
                headers=ratelimit_headers(lim.name, d, lim.rate_per_s, lim.burst),
            )

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()

    def allows(self, principal: Principal, action: Action) -> bool:
        """Whether the policy allows it (lists are filtered with this; nothing is counted)."""
        return self.policy.allows(principal, action)

    def caller(self, principal: Principal, asserted: str | None) -> str | None:
        """The caller recorded for a call: the one the request names when its principal may
        assert callers (or no authentication is configured), else the principal itself."""
        if not self.policy.enabled or (asserted and self.policy.may_assert_caller(principal)):
            return asserted
        return principal.name
