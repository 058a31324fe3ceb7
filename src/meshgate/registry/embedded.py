"""The embedded registry: in-process, for one node.

MCP instances are registered by the supervisor after their handshake and so need no
persistence: after a restart the supervisor registers fresh, verified ones.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from meshgate.registry.base import InstanceRecord, InstanceState, Listener

log = logging.getLogger("meshgate.registry")


class EmbeddedRegistry:
    name = "embedded"

    def __init__(self) -> None:
        self._records: dict[str, InstanceRecord] = {}
        self._listeners: list[Listener] = []

    def register(self, record: InstanceRecord) -> None:
        previous = self._records.get(record.id)
        self._records[record.id] = record
        self._emit(record, previous)

    def update(self, record: InstanceRecord) -> None:
        if record.id not in self._records:
            raise KeyError(f"instance {record.id!r} is not registered")
        self.register(record)

    def deregister(self, instance_id: str) -> None:
        previous = self._records.pop(instance_id, None)
        if previous is not None:
            self._emit(dataclasses.replace(previous, state=InstanceState.STOPPED), previous)

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self._records.get(instance_id)

    def held_by(self, node: str, instance_id: str) -> InstanceRecord | None:
        record = self._records.get(instance_id)
        return record if record is not None and record.node == node else None

    def instances(self, service: str | None = None) -> list[InstanceRecord]:
        return [r for r in self._records.values() if service is None or r.service == service]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "status": "ok", "instances": len(self._records)}

    async def start(self) -> None:
        pass  # nothing to connect to

    async def stop(self) -> None:
        pass

    def close(self) -> None:
        self._listeners.clear()

    def _emit(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        if previous is None or previous.state != record.state:
            log.info(
                "instance %s: %s -> %s",
                record.id,
                previous.state.value if previous else "-",
                record.state.value,
            )
        for listener in self._listeners:
            listener(record, previous)
