"""The cluster the drills run on: three kinds of MCP server, shared by
tests/integration/test_cluster_chaos.py and bench/bench_cluster.py.

Every node runs `fault` (the harness's own) and `scaled` (a pool of 1 to 4 fault servers that
grows under a burst within a second and shrinks 2 s after it); the first two nodes also run
`solo`, which the others reach only by forwarding. Each fault server logs its `write`s to a
file of its own in the node's directory, which `Cluster.write_counts` reads.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from meshgate.testing.chaos import Load
from meshgate.testing.cluster import NODE_POLICY, Cluster, Node
from meshgate.testing.haproxy import RETRY_SAFE_PATHS

SOLO = Load(server="solo")
SOLO_NODES = 2  # solo runs on n1 and n2
SCALED = Load(server="scaled", read="sleep", read_args=(("seconds", 0.2),))
SCALED_POLICY = """
[servers.scaled]
instances = {min = 1, max = 4}
max_in_flight = 4
[servers.scaled.autoscale]
interval_s = 0.1
scale_up_in_flight = 1
scale_up_after_s = 0.3
scale_down_after_s = 2
"""


def fault_server(node: Node, name: str) -> dict[str, object]:
    """A fault server logging its `write`s next to the node's own fault server's."""
    log = node.workdir / f"writes-{name}.log"
    return {
        "command": sys.executable,
        "args": ["-m", "meshgate.testing.fault_server", "--write-log", str(log)],
    }


def node_servers(node: Node) -> Mapping[str, Mapping[str, object]]:
    servers = {"scaled": fault_server(node, "scaled")}
    if int(node.name[1:]) <= SOLO_NODES:
        servers["solo"] = fault_server(node, "solo")
    return servers


def drill_cluster(workdir: Path, nodes: int = 3, *, sentinel: bool = False) -> Cluster:
    """A cluster of `nodes` with `fault` and `scaled` on each, `solo` on the first two;
    HAProxy re-sends `solo`'s `echo` as it does `fault`'s."""
    return Cluster(
        workdir,
        nodes=nodes,
        node_policy=NODE_POLICY + SCALED_POLICY,
        node_servers=node_servers,
        retry_safe_paths=[*RETRY_SAFE_PATHS, SOLO.path("echo")],
        sentinel=sentinel,
    )
