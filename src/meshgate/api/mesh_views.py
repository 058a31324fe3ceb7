"""Services as the mesh API shows them: MCP servers, HTTP services and the instances other
nodes registered, one view each, shared by the listing, health and topology routes."""

from __future__ import annotations

from typing import Any

from meshgate.registry.base import Registry
from meshgate.resilience import BreakerState
from meshgate.router import Router
from meshgate.router.cluster import NODE_KIND
from meshgate.services.mesh import ServiceMesh
from meshgate.urls import redact_url


class MeshViews:
    """The views of every service this node can reach."""

    def __init__(self, router: Router, registry: Registry, services: ServiceMesh, node: str):
        self.router = router
        self.registry = registry
        self.services = services
        self.node = node

    def mcp(self, name: str) -> dict[str, Any]:
        view = self.router.supervisor.pools[name].view()
        return {**view, "kind": "mcp"}

    def http(self, name: str) -> dict[str, Any]:
        pool = self.services.pools.get(name)
        instances = sorted(pool.instances.values(), key=lambda i: i.id) if pool else []
        states = {i.state.value for i in instances}
        state = next((s for s in ("healthy", "starting", "unhealthy") if s in states), "stopped")
        return {
            "name": name,
            "kind": "http",
            "state": state,
            "instances": [i.view() for i in instances],
        }

    def remote(self, views: dict[str, dict[str, Any]], only: str | None = None) -> None:
        """Add the instances other nodes registered (a shared registry backend) that `http`
        did not show: their HTTP instances are pooled here and shown there."""
        for r in self.registry.instances(only):
            if (
                r.node == self.node
                or r.kind == NODE_KIND
                or f"{r.node}/{r.id}" in self.services.remote
            ):
                continue
            view = views.setdefault(
                r.service,
                {"name": r.service, "kind": r.kind, "state": "stopped", "instances": []},
            )
            view["instances"].append(
                {
                    "id": r.id,
                    "node": r.node,
                    "kind": r.kind,
                    "state": r.state.value,
                    "url": redact_url(r.address) if r.address else r.address,
                    "tags": r.metadata.get("tags", []),
                    "remote": True,
                }
            )
            if r.state.value == "healthy":
                view["state"] = "healthy"
            elif view["state"] == "stopped":
                view["state"] = r.state.value

    def one(self, name: str) -> dict[str, Any] | None:
        """The view of one service, None when this node knows of none by that name."""
        found: dict[str, dict[str, Any]] = {}
        if name in self.router.supervisor.pools:
            found[name] = self.mcp(name)
        elif name in self.services.pools:
            found[name] = self.http(name)
        self.remote(found, name)
        return found.get(name)

    def all(self) -> dict[str, dict[str, Any]]:
        views = {name: self.mcp(name) for name in self.router.supervisor.pools}
        for name in self.services.pools:
            views.setdefault(name, self.http(name))
        self.remote(views)
        return views

    def breakers(self) -> dict[str, str]:
        """The circuit breaker state of every instance this node routes to, by instance id
        (peer nodes by node id: one breaker each)."""
        out: dict[str, str] = {}
        for pool in self.router.supervisor.pools.values():
            for slot in pool.slots:
                if slot.instance is not None:
                    out[slot.instance.id] = slot.instance.breaker.state.value
        for service_pool in self.services.pools.values():
            for inst in service_pool.instances.values():
                out[inst.id] = inst.breaker.state.value
        cluster = self.router.cluster
        if cluster is not None:
            for node, peer in cluster.peers.items():
                out[f"node:{node}"] = peer.breaker.state.value
        return out


def open_breakers(breakers: dict[str, str]) -> int:
    return sum(state == BreakerState.OPEN.value for state in breakers.values())
