"""Who calls whom: caller -> callee edges observed on the call path, for `GET /topology`.

A caller names itself with the `X-Meshgate-Caller` header (an agent calling through the
gateway), or is the MCP client's name (`clientInfo.name` of its session). Edges are counted
with their errors and last time seen; their number is bounded so that a caller inventing names
cannot grow memory without limit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

CALLER_HEADER = "x-meshgate-caller"
MAX_EDGES = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass
class Edge:
    calls: int = 0
    errors: int = 0
    last_seen: float = 0.0


class EdgeLog:
    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], Edge] = {}
        self.dropped = 0

    def record(self, caller: str | None, callee: str, *, ok: bool) -> None:
        if not caller or not _NAME.match(caller):
            return
        key = (caller, callee)
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= MAX_EDGES:
                self.dropped += 1
                return
            edge = self.edges[key] = Edge()
        edge.calls += 1
        edge.errors += 0 if ok else 1
        edge.last_seen = time.time()


def mermaid(nodes: dict[str, str], edges: list[tuple[str, str, str]]) -> str:
    """A Mermaid flowchart: nodes by name with their status, edges (from, to, kind)."""
    ids = {name: f"n{i}" for i, name in enumerate(sorted(nodes))}
    lines = ["flowchart LR"]
    for name in sorted(nodes):
        lines.append(f'  {ids[name]}["{name} ({nodes[name]})"]')
    for src, dst, kind in edges:
        if src in ids and dst in ids:
            arrow = "-->" if kind == "observed" else "-.->"
            lines.append(f"  {ids[src]} {arrow} {ids[dst]}")
    return "\n".join(lines) + "\n"


def dot(nodes: dict[str, str], edges: list[tuple[str, str, str]]) -> str:
    """The same graph in Graphviz DOT."""
    lines = ["digraph mesh {", "  rankdir=LR;"]
    for name in sorted(nodes):
        lines.append(f'  "{name}" [label="{name}\\n{nodes[name]}"];')
    for src, dst, kind in edges:
        style = "solid" if kind == "observed" else "dashed"
        lines.append(f'  "{src}" -> "{dst}" [style={style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
