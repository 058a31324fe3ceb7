"""A principal: the identity a request was authenticated as, and the roles it holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Via = Literal["key", "jwt", "mtls", "anonymous", "local", "node"]
_VIAS = ("key", "jwt", "mtls", "anonymous", "local", "node")

# Where the authentication middleware leaves the principal in an ASGI scope.
PRINCIPAL_SCOPE_KEY = "meshgate.principal"


@dataclass(frozen=True)
class Principal:
    """Who a request runs as: a name unique within its kind of credential, the roles that
    decide what it may do, and how it proved who it is."""

    name: str
    roles: frozenset[str] = frozenset()
    via: Via = "key"
    service: str | None = None
    """A service credential's own service: it may register and heartbeat only this name."""
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def to_json(self) -> dict[str, Any]:
        """What a task keeps of the principal that enqueued it, to run with its rights."""
        out: dict[str, Any] = {"name": self.name, "roles": sorted(self.roles), "via": self.via}
        if self.service is not None:
            out["service"] = self.service
        return out

    @classmethod
    def from_json(cls, data: object) -> Principal:
        """The principal a task was enqueued by (`to_json`); NOBODY when none was kept."""
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return NOBODY
        roles = data.get("roles")
        service = data.get("service")
        return cls(
            name=data["name"],
            roles=frozenset(str(r) for r in roles) if isinstance(roles, list) else frozenset(),
            via=data["via"] if data.get("via") in _VIAS else "key",
            service=service if isinstance(service, str) else None,
        )


# Without authentication configured the gateway serves loopback only, and every request runs
# as this principal, with every right (as a local tool run by its owner).
LOCAL = Principal("local", frozenset({"admin"}), via="local")


# A request the authentication middleware never saw has no rights at all: failing closed.
NOBODY = Principal("anonymous", frozenset(), via="anonymous")


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The principal the authentication middleware found for a request (LOCAL when no
    authentication is configured, NOBODY when the middleware did not run)."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else NOBODY
