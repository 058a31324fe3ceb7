"""Membership and forwarding: this gateway as one node of a cluster sharing a registry.

Each node announces itself in the registry as a record of kind `node` (so the registry's
leases, renewal, publication and resync carry it): its URL (`advertise_url`), version, start
time, load (calls in flight) and, per MCP server it runs, the healthy and total instance counts
with the server's catalog. The record is written again every third of `registry_lease_s`; a
node that stops writing is gone when its lease runs out.

A node forwards a call for an MCP server it has no healthy instance of (or does not run) to a
node whose instance records show a healthy one: each such peer is one more instance of the
server for the router (a `PeerInstance`, after every local one), with its own circuit breaker.
It is called at its stateless MCP endpoint `/mcp/{server}` (protocol 2026-07-28) over a
`PeerConnection` (aiohttp), with the deadline left, the hop count and, with a cluster secret,
the node's signature asserting the caller (`meshgate.security.nodes`). A server only peers run is a
`RemotePool`: a pool with no slots, whose catalog comes from the peers' node records.

Handshake-era sessions stay on the node that opened them, and their ids begin with that
node's tag (`session_tag`): any node finds the owner among the node records
(`Cluster.owner_of`) and relays the session's requests there (`meshgate.api.mcp_http.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from meshgate import __version__
from meshgate.config import InstanceBounds, ServerPolicy, ServerSpec
from meshgate.registry.base import InstanceRecord, InstanceState, Registry
from meshgate.resilience import CircuitBreaker
from meshgate.security.nodes import NodeCredentials
from meshgate.upstream.catalog import Subscriber
from meshgate.upstream.http import HttpUpstream
from meshgate.upstream.instance import Instance, breaker_policy
from meshgate.upstream.peer import PeerConnection
from meshgate.upstream.supervisor import ServerPool, Supervisor
from meshgate.wire.jsonrpc import JSON
from meshgate.wire.protocol import Era, ServerIdentity, stateless_meta

log = logging.getLogger("meshgate.cluster")

NODE_KIND = "node"  # the kind of a node's own record in the registry
NODE_SERVICE = "meshgate-nodes"  # the service node records are filed under
NODE_RECORD_ID = "_node"
SESSION_TAG_SEP = "."  # between a session id's node tag and its random part (never in either)


def session_tag(node_id: str) -> str:
    """The short tag a node's session ids begin with: a hash of its id, so that any node id
    (whatever characters it has) makes a tag of visible ASCII, and the node records map it
    back to the node."""
    return hashlib.blake2s(node_id.encode(), digest_size=5).hexdigest()


class PeerNode:
    """Another node of the cluster, as this one calls it."""

    def __init__(self, node_id: str, url: str, breaker: CircuitBreaker) -> None:
        self.id = node_id
        self.url = url
        self.breaker = breaker  # one per peer: a node that fails does so for every server
        self.down_until = 0.0
        self.started_at: object = None
        self.instances: dict[str, PeerInstance] = {}

    def up(self) -> bool:
        return time.monotonic() >= self.down_until


class PeerInstance(Instance):
    """A peer node as one instance of a server it runs healthy."""

    def __init__(self, server: str, peer: PeerNode, conn: HttpUpstream, path: str) -> None:
        super().__init__(server, 0, peer.id, conn, peer.breaker, 0)
        self.id = f"{server}@{peer.id}"
        self.peer = peer
        self.path = path  # what the node signature covers
        self.http = conn
        self.state = InstanceState.HEALTHY

    @property
    def routable(self) -> bool:
        return self.conn.alive and self.peer.up()

    def unreachable(self, for_s: float) -> None:
        """The peer did not accept a connection: not a candidate until its next record is
        due (a live node writes one every third of the lease)."""
        self.peer.down_until = time.monotonic() + for_s

    def view(self) -> dict[str, Any]:
        return {**super().view(), "node": self.peer.id, "url": self.peer.url, "remote": True}


class RemotePool(ServerPool):
    """A server this node does not run, served by the peer nodes that do."""

    def __init__(self, name: str, policy: ServerPolicy, *, node: str, registry: Registry) -> None:
        super().__init__(
            ServerSpec(name=name, command="", policy=policy),
            node=node,
            registry=registry,
            reaper=None,
        )
        self.slots = []

    @property
    def state(self) -> InstanceState:
        return InstanceState.HEALTHY if self.routable() else InstanceState.STOPPED

    # No process of its own may start: with no peer routable a call answers 503 at once
    # rather than waiting `restart_wait_s` as for a pool scaled to zero (and trying to grow).
    def recoverable(self) -> bool:
        return False

    def restarting(self) -> bool:
        return False

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "mcp",
            "mode": self.policy.mode,
            "strategy": self.policy.strategy,
            "state": self.state.value,
            "remote": True,
            "instances": [i.view() for i in self.routable()],
            "tools": sorted(self.tools),
        }


def _identity(data: object) -> ServerIdentity | None:
    if not isinstance(data, dict):
        return None
    try:
        era = Era(data.get("era"))
    except ValueError:
        return None

    def obj(value: object) -> JSON:
        return value if isinstance(value, dict) else {}

    instructions = data.get("instructions")
    return ServerIdentity(
        era,
        str(data.get("protocol_version", "")),
        obj(data.get("capabilities")),
        obj(data.get("server_info")),
        instructions if isinstance(instructions, str) else None,
    )


class Cluster:
    """This node's membership record and its view of the other nodes."""

    def __init__(
        self,
        *,
        node: str,
        url: str,
        registry: Registry,
        supervisor: Supervisor,
        lease_s: float,
        credentials: NodeCredentials | None = None,
        remote_policy: ServerPolicy | None = None,
        tls: Any = None,
    ) -> None:
        self.node = node
        self.tag = session_tag(node)  # looked at on every session request
        self.url = url
        self.registry = registry
        self.supervisor = supervisor
        self.lease_s = lease_s
        self.credentials = credentials
        self.remote_policy = (remote_policy or ServerPolicy()).model_copy(
            update={"mode": "shared", "instances": InstanceBounds(min=1, max=1)}
        )
        self.tls = tls
        self.started_at = time.time()
        self.load: Callable[[], int] = lambda: 0
        self.peers: dict[str, PeerNode] = {}
        self.remote: dict[str, RemotePool] = {}
        self.watchers: list[Subscriber] = []  # told of a remote server's notifications
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        for pool in supervisor.pools.values():
            pool.peers = self._peers_of(pool.name)
        # The other nodes' records, kept from the registry's events: finding them by a scan of
        # every record made registering n instances quadratic (each new id asks who holds it).
        self._nodes: dict[str, InstanceRecord] = {}
        for r in registry.instances(NODE_SERVICE):
            self._keep_node(r)
        registry.subscribe(self._on_record)

    # -- this node's record --------------------------------------------------------------------

    def servers(self) -> dict[str, JSON]:
        """The MCP servers this node runs: instance counts and what peers need to serve them."""
        out: dict[str, JSON] = {}
        for name, pool in self.supervisor.pools.items():
            identity = pool.identity
            out[name] = {
                "healthy": len(pool.local_routable()),
                "total": len(pool.slots),
                "namespace": pool.policy.namespace,
                "tools": list(pool.tools.values()),
                "identity": None
                if identity is None
                else {
                    "era": identity.era.value,
                    "protocol_version": identity.protocol_version,
                    "capabilities": identity.capabilities,
                    "server_info": identity.server_info,
                    "instructions": identity.instructions,
                },
            }
        return out

    def record(self) -> InstanceRecord:
        return InstanceRecord(
            id=NODE_RECORD_ID,
            service=NODE_SERVICE,
            kind=NODE_KIND,
            node=self.node,
            state=InstanceState.HEALTHY,
            address=self.url,
            metadata={
                "version": __version__,
                "started_at": self.started_at,
                "load": self.load(),
                "servers": self.servers(),
            },
        )

    def publish(self) -> None:
        self.registry.register(self.record())

    async def start(self) -> None:
        """Announce this node, then again every third of the lease."""
        self.publish()
        self._task = asyncio.create_task(self._run(), name="cluster membership")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                self.publish()
            except Exception:  # the next round tries again; membership must not die
                log.exception("could not write this node's record")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.registry.deregister(NODE_RECORD_ID)
        for peer in self.peers.values():
            for inst in peer.instances.values():
                inst.http.close_stdin()
        if self._http is not None:
            await self._http.close()

    # -- the other nodes -----------------------------------------------------------------------

    def node_records(self) -> list[InstanceRecord]:
        """The other nodes' records in the registry, by node id."""
        return [self._nodes[node] for node in sorted(self._nodes)]

    def _keep_node(self, record: InstanceRecord) -> None:
        if record.kind != NODE_KIND or record.service != NODE_SERVICE or record.node == self.node:
            return
        if record.state is InstanceState.STOPPED:  # how every registry says a record is gone
            self._nodes.pop(record.node, None)
        else:
            self._nodes[record.node] = record

    def owner_of(self, session_id: str) -> InstanceRecord | None:
        """The live record of the other node whose tag a session id begins with; None when
        the id is this node's, or names no node of the cluster (gone, or never was)."""
        tag, sep, _ = session_id.partition(SESSION_TAG_SEP)
        if not sep or tag == self.tag:
            return None
        for r in self.node_records():
            if session_tag(r.node) == tag:
                return r
        return None

    def instance_owner(
        self, instance_id: str, service: str | None = None
    ) -> tuple[InstanceRecord, str] | None:
        """Another live node's HTTP service instance `instance_id` (of `service`, when given):
        its record and that node's URL; None when no other node with a live record has it."""
        # One lookup per live node, not a sort of every record: every registration of a new id
        # asks, and that sort made registering n instances quadratic (bench/RESULTS.md).
        for node in self.node_records():
            address = node.address
            r = self.registry.held_by(node.node, instance_id) if address else None
            if address and r is not None and r.kind == "http" and service in (None, r.service):
                return r, address
        return None

    def owns(self, session_id: str) -> bool:
        """Whether a session id was made by this node (ids without a tag are nobody's)."""
        tag, sep, _ = session_id.partition(SESSION_TAG_SEP)
        return bool(sep) and tag == self.tag

    def _on_record(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        self._keep_node(record)
        if record.kind != NODE_KIND or record.node == self.node:
            return
        if record.state is InstanceState.STOPPED:
            peer = self.peers.pop(record.node, None)
            if peer is not None:
                log.info("node %s left", peer.id)
                for inst in peer.instances.values():
                    inst.http.close_stdin()
            return
        url = record.address or ""
        peer = self.peers.get(record.node)
        if peer is None or peer.url != url:
            if peer is not None:
                for inst in peer.instances.values():
                    inst.http.close_stdin()
            log.info("node %s joined at %s", record.node, url)
            breaker = CircuitBreaker(breaker_policy(self.remote_policy))
            peer = self.peers[record.node] = PeerNode(record.node, url, breaker)
        started = record.metadata.get("started_at")
        if started != peer.started_at:  # a new process there: worth trying at once
            peer.started_at, peer.down_until = started, 0.0
        self._refresh_catalogs()

    def _refresh_catalogs(self) -> None:
        """Servers only peers run become remote pools; catalogs come from the peers' records
        (a node with a healthy instance first)."""
        offers: dict[str, list[tuple[bool, JSON]]] = {}
        for r in self.node_records():
            servers = r.metadata.get("servers")
            for name, entry in (servers if isinstance(servers, dict) else {}).items():
                if isinstance(entry, dict):
                    offers.setdefault(name, []).append((bool(entry.get("healthy")), entry))
        for name, entries in offers.items():
            entry = max(entries, key=lambda e: e[0])[1]
            local = self.supervisor.pools.get(name)
            if local is not None:
                if local.tools_version == 0 and entry.get("tools"):
                    local.set_catalog(t for t in entry["tools"] if isinstance(t, dict))
                continue
            pool = self.remote.get(name)
            if pool is None:
                namespace = entry.get("namespace")
                policy = self.remote_policy.model_copy(
                    update={"namespace": namespace if isinstance(namespace, str) else None}
                )
                pool = RemotePool(name, policy, node=self.node, registry=self.registry)
                pool.peers = self._peers_of(name)
                pool.subscribers.update(self.watchers)
                self.remote[name] = pool
                log.info("MCP server %s is served by peer nodes", name)
            tools = entry.get("tools")
            if isinstance(tools, list):
                pool.set_catalog(t for t in tools if isinstance(t, dict) and "name" in t)
            identity = _identity(entry.get("identity"))
            if identity is not None:
                pool.identity = identity

    def _peers_of(self, server: str) -> Callable[[], list[Instance]]:
        def peers() -> list[Instance]:
            nodes = sorted(
                {
                    r.node
                    for r in self.registry.instances(server)
                    if r.kind == "mcp" and r.node != self.node and r.state is InstanceState.HEALTHY
                }
            )
            out: list[Instance] = []
            for node in nodes:
                peer = self.peers.get(node)
                if peer is not None:
                    inst = self._instance(peer, server)
                    if inst.routable:
                        out.append(inst)
            return out

        return peers

    def _session(self) -> aiohttp.ClientSession:
        """The connection pool of every call to a peer (made in the running loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, ssl=self.tls if self.tls is not None else True
                ),
                timeout=aiohttp.ClientTimeout(total=None, connect=10),
                # Nothing of a client's (cookies, Authorization) goes from one call to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._http

    def _instance(self, peer: PeerNode, server: str) -> PeerInstance:
        inst = peer.instances.get(server)
        if inst is None or not inst.http.alive:
            path = f"/mcp/{server}"
            conn = PeerConnection(
                f"{peer.url}/mcp/{quote(server, safe='')}",
                label=f"node {peer.id} ({server})",
                session=self._session(),
            )
            conn.meta = stateless_meta()
            pool = self.supervisor.pools.get(server) or self.remote.get(server)

            def schema(tool: str) -> Any:
                return pool.tools.get(tool, {}).get("inputSchema") if pool is not None else None

            conn.tool_schema = schema
            inst = peer.instances[server] = PeerInstance(server, peer, conn, path)
        return inst

    # -- views ---------------------------------------------------------------------------------

    def pools(self) -> dict[str, ServerPool]:
        """Every MCP server this node can call: its own, then those only peers run."""
        local: dict[str, ServerPool] = dict(self.supervisor.pools)
        return {**self.remote, **local}

    def _node_view(self, record: InstanceRecord, *, own: bool) -> JSON:
        meta = record.metadata
        servers = meta.get("servers") if isinstance(meta.get("servers"), dict) else {}
        peer = self.peers.get(record.node)
        return {
            "id": record.node,
            "url": record.address,
            "version": meta.get("version"),
            "started_at": meta.get("started_at"),
            "load": meta.get("load"),
            "self": own,
            "reachable": True if own else peer is not None and peer.up(),
            "servers": {
                name: {"healthy": s.get("healthy", 0), "total": s.get("total", 0)}
                for name, s in sorted((servers or {}).items())
                if isinstance(s, dict)
            },
        }

    def nodes(self) -> list[JSON]:
        """This node, then every other node with a live record."""
        return [
            self._node_view(self.record(), own=True),
            *(self._node_view(r, own=False) for r in self.node_records()),
        ]

    def remote_instances(self, server: str) -> list[JSON]:
        """Other nodes' instances of a server, as their records show them."""
        return [
            {"id": r.id, "node": r.node, "state": r.state.value, "remote": True}
            for r in sorted(self.registry.instances(server), key=lambda r: (r.node, r.id))
            if r.kind == "mcp" and r.node != self.node
        ]
