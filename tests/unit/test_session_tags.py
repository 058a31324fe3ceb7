"""Session ids name the node that holds the session: the tag, and how a node maps it back."""

from __future__ import annotations

from meshgate.registry.base import InstanceRecord, InstanceState
from meshgate.registry.embedded import EmbeddedRegistry
from meshgate.router.cluster import NODE_KIND, NODE_RECORD_ID, NODE_SERVICE, Cluster, session_tag
from meshgate.upstream.supervisor import Supervisor


def cluster_of(node: str) -> tuple[Cluster, EmbeddedRegistry]:
    registry = EmbeddedRegistry()
    supervisor = Supervisor([], node=node, registry=registry)
    cluster = Cluster(
        node=node, url="http://127.0.0.1:1", registry=registry, supervisor=supervisor, lease_s=3
    )
    return cluster, registry


def node_record(
    node: str, url: str, state: InstanceState = InstanceState.HEALTHY
) -> InstanceRecord:
    return InstanceRecord(
        id=NODE_RECORD_ID,
        service=NODE_SERVICE,
        kind=NODE_KIND,
        node=node,
        state=state,
        address=url,
    )


def test_a_tag_is_short_visible_ascii_whatever_the_node_id() -> None:
    for node in ("gw-1", "gw 1\n", "ünïcode/\x00", "a" * 300, ""):
        tag = session_tag(node)
        assert len(tag) == 10 and all(c in "0123456789abcdef" for c in tag)
    assert session_tag("gw-1") == session_tag("gw-1") != session_tag("gw-2")


def test_a_node_owns_its_ids_and_finds_the_live_owner_of_others() -> None:
    cluster, registry = cluster_of("gw-1")
    own = session_tag("gw-1") + ".random"
    theirs = session_tag("gw-2") + ".random"
    assert cluster.owns(own) and cluster.owner_of(own) is None
    assert not cluster.owns(theirs) and cluster.owner_of(theirs) is None  # not a member yet
    registry.register(node_record("gw-2", "http://10.0.0.2:8800"))
    owner = cluster.owner_of(theirs)
    assert owner is not None and owner.address == "http://10.0.0.2:8800"
    for bad in ("", "no-tag", ".random", session_tag("gw-3") + ".random", "gw-2.random"):
        assert not cluster.owns(bad) and cluster.owner_of(bad) is None, bad
    registry.deregister(NODE_RECORD_ID)  # gw-2 left
    assert cluster.owner_of(theirs) is None
