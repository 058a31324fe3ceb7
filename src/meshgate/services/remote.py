"""HTTP service instances other nodes registered, pooled here too.

An HTTP service is a network endpoint every node can reach, so a node routes to the instances
registered through its peers as to its own. What it knows of them is the shared registry's
record: the URL, weight, tags and metadata, and the state the registering node's checks found.
That node alone checks the instance (one check per instance, not one per node), renews its
lease and removes it; this node follows its records (a deregistration, or the lease running out
when the node dies, removes the instance here too), and adds only its own circuit breaker, so
an instance it cannot reach stops getting its calls after a few failures.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from meshgate.config import Registration, ServerPolicy
from meshgate.crypto import mask
from meshgate.health import HealthLog
from meshgate.registry.base import InstanceRecord
from meshgate.services.mesh import ServiceInstance
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.services")


def registration_of(record: InstanceRecord) -> Registration | None:
    """The registration a peer's record stands for (None: it is not one this node can call)."""
    if record.kind != "http" or not record.address:
        return None
    metadata = dict(record.metadata)
    tags = metadata.pop("tags", [])
    try:
        return Registration(
            name=record.service,
            id=record.id,
            url=record.address,
            weight=record.weight,
            tags=tags if isinstance(tags, list) else [],
            metadata=metadata,
        )
    except ValidationError as e:
        log.warning(
            "instance %s of node %s (%s) cannot be called from here: %s",
            record.id,
            record.node,
            redact_url(record.address),
            e.errors()[0].get("msg", e),
        )
        return None


def pool_key(record: InstanceRecord) -> str:
    """Where a peer's instance sits in a pool: ids are unique per node only."""
    return f"{record.node}/{record.id}"


class RemoteServiceInstance(ServiceInstance):
    """A peer's instance: routed to here, checked and owned by the node that registered it."""

    def __init__(
        self,
        record: InstanceRecord,
        reg: Registration,
        policy: ServerPolicy,
        *,
        health_log: HealthLog,
    ) -> None:
        super().__init__(reg, time.time(), policy, static=False, health_log=health_log)
        self.node = record.node
        self.follow(record)

    def follow(self, record: InstanceRecord) -> None:
        """Take the state the registering node reports (no transition of this node's)."""
        self.health.state = record.state

    def view(self) -> dict[str, Any]:
        breaker = self.breaker.state
        return {
            "id": self.id,
            "name": self.service,
            "kind": "http",
            "node": self.node,
            "remote": True,
            "url": redact_url(self.reg.base_url),
            "state": self.state.value,
            "tags": self.reg.tags,
            "metadata": mask(self.reg.metadata),
            "weight": self.reg.weight,
            "breaker": getattr(breaker, "value", str(breaker)),
            "in_flight": self.in_flight,
        }
