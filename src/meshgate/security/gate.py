"""The gate: the one place where a principal's action is allowed or refused.

The router asks it for every call it routes, whichever entry the call came by (REST, /mcp,
/sse, the proxy, task enqueue and execution); the mesh's own routes (register, tasks, keys)
ask it for their operations. It checks the policy (403), then the rate limits (429), and
writes one audit line for each refusal.
"""

from __future__ import annotations

import logging

from meshgate.errors import Forbidden
from meshgate.security.policy import Action, Policy
from meshgate.security.principal import Principal

audit = logging.getLogger("meshgate.audit")


class Gate:
    """Policy (and limits) for every action of every principal."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy({}, enabled=False)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    async def admit(self, principal: Principal, action: Action) -> None:
        """Raise Forbidden (403) unless the principal may take the action now."""
        try:
            self.policy.check(principal, action)
        except Forbidden:
            audit.warning(
                "denied",
                extra={"event": "denied", "principal": principal.name, "action": action.describe()},
            )
            raise

    def allows(self, principal: Principal, action: Action) -> bool:
        """Whether the policy allows it (lists are filtered with this; nothing is counted)."""
        return self.policy.allows(principal, action)

    def caller(self, principal: Principal, asserted: str | None) -> str | None:
        """The caller recorded for a call: the one the request names when its principal may
        assert callers (or no authentication is configured), else the principal itself."""
        if not self.policy.enabled or (asserted and self.policy.may_assert_caller(principal)):
            return asserted
        return principal.name
