"""What the Consul-compatible API shows: meshgate's registry as Consul's nodes, services and
checks, and the change index its blocking queries wait on.

Nodes are meshgate's gateway nodes (this one, and with a shared registry every node with a
live record). Each registered HTTP service instance is a service of the node that registered
it, with one check: the one meshgate runs (http, tcp, mcp) or the ttl check it reports. Each
MCP server a node supervises is a service of that node tagged `mcp`, at the node's own address
and port (its endpoint is `/mcp/{name}` there), passing while its pool has a healthy process
or is scaled to zero (it starts one on the first call).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from meshgate.api.consul_agent import (
    CHECK_ID,
    CHECK_NAME,
    CHECK_NOTES,
    WARNING_WEIGHT,
    consul_meta,
)
from meshgate.crypto import mask
from meshgate.registry.base import InstanceRecord, InstanceState
from meshgate.resilience import Signal
from meshgate.router import Router
from meshgate.router.cluster import NODE_KIND
from meshgate.services.mesh import ServiceInstance, ServiceMesh

MCP_TAG = "mcp"
SERF_CHECK = "serfHealth"


class ChangeIndex:
    """Consul's X-Consul-Index: a number that grows with every change a reader could see,
    overall and per service, and wakes the blocking queries waiting on it.

    It starts at the wall-clock time in milliseconds, so that a restarted gateway answers
    with an index above the ones it gave before: a client's blocking query with an old index
    returns at once instead of waiting out its whole `wait`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.floor = max(1, int(clock() * 1000))
        self.current = self.floor
        self.of: dict[str, int] = {}
        self.closing = False
        self._signal = Signal()

    def service(self, name: str) -> int:
        return self.of.get(name, self.floor)

    def touch(self, *services: str) -> None:
        """Something changed (in these services): move the index on and wake the waiters."""
        self.current += 1
        for name in services:
            self.of[name] = self.current
        self._signal.notify()

    def followed(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        """A registry listener: touch the services a record's change shows in (a node's
        record renewing its lease, with only its load changed, shows in none)."""
        if record.kind == NODE_KIND:
            if (
                previous is None
                or record.state is InstanceState.STOPPED
                or record.address != previous.address
                or _servers(record) != _servers(previous)
            ):
                names = set(_servers(record)) | (set(_servers(previous)) if previous else set())
                self.touch(*names)
            return
        if (
            previous is None
            or record.state != previous.state
            or record.address != previous.address
            or record.weight != previous.weight
            or record.metadata != previous.metadata
        ):
            self.touch(record.service)

    def close(self) -> None:
        """Shutting down: every blocked query answers now."""
        self.closing = True
        self._signal.notify()

    async def wait_past(self, index: int, service: str | None, timeout: float) -> None:
        """Until the index (of `service`, or overall) passes `index`, or `timeout` seconds."""
        loop_end = time.monotonic() + timeout
        while not self.closing:
            now_index = self.current if service is None else self.service(service)
            left = loop_end - time.monotonic()
            if now_index > index or left <= 0:
                return
            await self._signal.wait(left)


def _servers(record: InstanceRecord) -> dict[str, tuple[int, int]]:
    servers = record.metadata.get("servers")
    if not isinstance(servers, dict):
        return {}
    return {
        name: (s.get("healthy", 0), s.get("total", 0))
        for name, s in servers.items()
        if isinstance(s, dict)
    }


@dataclass
class CheckView:
    id: str
    name: str
    status: str
    output: str
    type: str
    notes: str = ""


@dataclass
class Entry:
    """One service instance as Consul shows it."""

    node: str
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    check: CheckView
    local: bool = True
    kind: str = "http"
    instance: ServiceInstance | None = field(default=None, repr=False)


@dataclass
class NodeView:
    name: str
    address: str
    port: int
    url: str
    servers: dict[str, tuple[int, int]]
    version: str = ""


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def node_id(name: str) -> str:
    """A node's ID, a UUID as Consul's are: the same for the same name on every node."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"meshgate-node:{name}"))


class Catalog:
    """Meshgate's state read as Consul's catalog, anew for each request."""

    def __init__(self, router: Router, services: ServiceMesh, *, node: str, url: str) -> None:
        self.router = router
        self.services = services
        self.node = node
        self.url = url

    def nodes(self) -> list[NodeView]:
        """This node, then every other node with a live record (read from the records
        themselves: the cluster's own views list every tool of every server)."""
        host, port = host_port(self.url)
        out = [NodeView(self.node, host, port, self.url, {})]
        cluster = self.router.cluster
        for record in cluster.node_records() if cluster is not None else []:
            if record.address:
                host, port = host_port(record.address)
                version = str(record.metadata.get("version") or "")
                out.append(
                    NodeView(record.node, host, port, record.address, _servers(record), version)
                )
        return out

    def entries(
        self, service: str | None = None, nodes: dict[str, NodeView] | None = None
    ) -> list[Entry]:
        """Every service instance (of `service`), this node's first; `nodes`: as `nodes()`
        gives them, by name, when the caller has them already."""
        if nodes is None:
            nodes = {n.name: n for n in self.nodes()}
        out: list[Entry] = []
        own = nodes[self.node]
        pools = self.router.supervisor.pools
        for name in sorted(pools):
            if service is None or name == service:
                pool = pools[name]
                if pool.state is InstanceState.HEALTHY:
                    status, why = "passing", "a process answers its health checks"
                elif pool.autoscaler.desired == 0 and not pool.slots:
                    status, why = "passing", "scaled to zero: a process starts on the first call"
                else:
                    status, why = "critical", f"no healthy process ({pool.state.value})"
                out.append(self._mcp(own, name, status, why))
        for inst in sorted(self.services.instances.values(), key=lambda i: i.id):
            if service is None or inst.service == service:
                out.append(self._http(inst, self.node, local=True))
        for key, inst in sorted(self.services.remote.items()):
            if service is None or inst.service == service:
                out.append(self._http(inst, key.partition("/")[0], local=False))
        for n in nodes.values():
            if n.name == self.node:
                continue
            for name, (healthy, total) in sorted(n.servers.items()):
                if service is None or name == service:
                    ok = healthy > 0 or total == 0
                    why = f"{healthy} of {total} processes healthy on node {n.name}"
                    out.append(self._mcp(n, name, "passing" if ok else "critical", why, False))
        return out

    def _mcp(self, n: NodeView, name: str, status: str, why: str, local: bool = True) -> Entry:
        path = f"/mcp/{name}"
        check = CheckView(f"mcp:{name}", f"MCP server {name}", status, why, "mcp")
        return Entry(
            node=n.name,
            id=f"mcp:{name}",
            name=name,
            address=n.address,
            port=n.port,
            tags=[MCP_TAG],
            meta={"kind": "mcp", "path": path, "url": n.url.rstrip("/") + path},
            weights={"Passing": 1, "Warning": 1},
            check=check,
            local=local,
            kind="mcp",
        )

    def _http(self, inst: ServiceInstance, node: str, *, local: bool) -> Entry:
        reg = inst.reg
        meta = reg.metadata
        address, port = (reg.address, reg.port) if reg.port else host_port(reg.base_url)
        state = inst.state
        last = inst.health.last
        if reg.check.type == "ttl" and inst.reported is not None:
            status = inst.reported
        else:
            status = "passing" if state is InstanceState.HEALTHY else "critical"
        if reg.check.type == "ttl" and inst.reported_note:
            output = inst.reported_note
        elif last is not None and last.error:
            output = last.error
        elif status == "passing":
            output = f"{reg.check.type} check passed"
        elif last is None:
            output = "not checked yet" if reg.check.type != "ttl" else "no report yet"
        else:
            output = state.value
        if not local:  # what the registering node found reaches this one as a state only
            output = f"{state.value} (checked by node {node})"
        check = CheckView(
            id=str(meta.get(CHECK_ID) or f"service:{inst.id}"),
            name=str(meta.get(CHECK_NAME) or f"Service '{reg.name}' check"),
            status=status,
            output=output[:4096],
            type=reg.check.type,
            notes=str(meta.get(CHECK_NOTES) or ""),
        )
        warning = meta.get(WARNING_WEIGHT)
        return Entry(
            node=node,
            id=inst.id,
            name=reg.name,
            address=address or "",
            port=port or 0,
            tags=list(reg.tags),
            meta=consul_meta(mask(meta)),
            weights={
                "Passing": reg.weight,
                "Warning": int(warning) if isinstance(warning, str) and warning.isdigit() else 1,
            },
            check=check,
            local=local,
            instance=inst,
        )


def passing(entry: Entry) -> bool:
    return entry.check.status == "passing"


# -- Consul's JSON shapes ------------------------------------------------------------------------


def node_json(n: NodeView, datacenter: str, index: int) -> dict[str, Any]:
    return {
        "ID": node_id(n.name),
        "Node": n.name,
        "Address": n.address,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": n.address, "wan": n.address},
        "Meta": {"meshgate-url": n.url},
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def agent_service_json(e: Entry, datacenter: str) -> dict[str, Any]:
    return {
        "ID": e.id,
        "Service": e.name,
        "Tags": e.tags,
        "Meta": e.meta,
        "Port": e.port,
        "Address": e.address,
        "Weights": e.weights,
        "EnableTagOverride": False,
        "Datacenter": datacenter,
    }


def service_json(e: Entry, index: int) -> dict[str, Any]:
    """The `Service` of a health entry (Consul's structs.NodeService)."""
    return {
        "ID": e.id,
        "Service": e.name,
        "Tags": e.tags,
        "Address": e.address,
        "Meta": e.meta,
        "Port": e.port,
        "Weights": e.weights,
        "EnableTagOverride": False,
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def check_json(e: Entry, index: int) -> dict[str, Any]:
    c = e.check
    return {
        "Node": e.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": e.id,
        "ServiceName": e.name,
        "ServiceTags": e.tags,
        "Type": c.type,
        "Definition": {},
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def serf_json(node: str, index: int) -> dict[str, Any]:
    """The node's own check: its record is live (Consul's `serfHealth`)."""
    return {
        "Node": node,
        "CheckID": SERF_CHECK,
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "the node's registry record is live",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Definition": {},
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def catalog_service_json(e: Entry, n: NodeView, datacenter: str, index: int) -> dict[str, Any]:
    """One entry of `/v1/catalog/service/{name}` (Consul's structs.ServiceNode)."""
    return {
        "ID": node_id(n.name),
        "Node": n.name,
        "Address": n.address,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": n.address, "wan": n.address},
        "NodeMeta": {"meshgate-url": n.url},
        "ServiceKind": "",
        "ServiceID": e.id,
        "ServiceName": e.name,
        "ServiceTags": e.tags,
        "ServiceAddress": e.address,
        "ServiceWeights": e.weights,
        "ServiceMeta": e.meta,
        "ServicePort": e.port,
        "ServiceEnableTagOverride": False,
        "CreateIndex": index,
        "ModifyIndex": index,
    }
