"""The Registry protocol: where verified instances are recorded and found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class InstanceState(str, Enum):
    """Lifecycle of an instance (docs/architecture.md, "Vocabulary")."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class InstanceRecord:
    """A registry entry: one verified process or endpoint of a service."""

    id: str
    service: str
    kind: str
    node: str
    state: InstanceState
    pid: int | None = None
    address: str | None = None
    weight: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[InstanceRecord, InstanceRecord | None], None]
"""Called with (new record, previous record or None); a removal passes state STOPPED."""


class Registry(Protocol):
    """Registry backends. Only a live, verified instance may be registered."""

    name: str

    def register(self, record: InstanceRecord) -> None: ...

    def update(self, record: InstanceRecord) -> None: ...

    def deregister(self, instance_id: str) -> None: ...

    def get(self, instance_id: str) -> InstanceRecord | None: ...

    def held_by(self, node: str, instance_id: str) -> InstanceRecord | None:
        """Node `node`'s record of `instance_id`, if it has one (a lookup, not a scan)."""
        ...

    def instances(self, service: str | None = None) -> list[InstanceRecord]: ...

    def subscribe(self, listener: Listener) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def close(self) -> None: ...
