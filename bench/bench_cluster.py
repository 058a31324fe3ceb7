"""A cluster of gateways behind HAProxy under faults, and its throughput with 1, 2 and 3 nodes.

    sudo .venv/bin/python bench/bench_cluster.py [--duration 60] [--nodes 3]
        [--throughput-s 20] [--sizes 1 2 3] [--rounds 2] [--keepalive-too]
        [--concurrency 16] [--skip-throughput] [--skip-scenarios] [--only WORD...]
        [--json FILE]

Scenarios (meshgate.testing.chaos, on `--nodes` gateways in network namespaces, one shared
Redis, HAProxy in front; meshgate.testing.drills has the servers): steady load; kill -9 of a
node a sixth into the run, started again at half; a partition of a node for a sixth of the
run; Redis killed and back after 2 s. Then `solo`, a server only n1 and n2 run (the others
forward to them): n1 killed (back at half); n1 down beforehand and n2 killed for a sixth, so
that no node runs it. Then `scaled` (1 to 4 instances): 2 callers throughout and a burst of
14 more for a third of the run, so the pools grow and then shrink under load. Last, on a
cluster of its own with Redis under Sentinel (a primary, a replica, three sentinels): the
primary killed. Each drives `--concurrency` closed-loop callers (70 % the read-only call,
15 % `write`, 15 % task enqueues of `write`) and prints, per scenario: the success rate of the
retry-safe calls, the failures of the others by status and problem type, tasks acknowledged
/ lost / run twice, the time from the fault to the last failed call and the fault's moments.

Throughput: `wrk` POSTing `echo` through HAProxy for `--throughput-s` at 32 connections, on a
fresh cluster of each size, the sizes interleaved `--rounds` times, HAProxy giving each
request a connection of its own on both sides (as the drills do); `--keepalive-too` also
measures HAProxy keeping its clients' connections alive, and both sides' (faster, but see
docs/operations.md for what each costs when a node dies).
Every process (wrk, HAProxy, Redis, the gateways and their servers) shares this machine's
cores: more nodes on the same cores show what the extra processes cost, not what more
machines would give.

Needs root (namespaces, a bridge) and haproxy, redis-server, ip; wrk for the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_echo import WRK_DONE, WRK_SCRIPT, wrk_once
from meshgate.testing import chaos
from meshgate.testing.cluster import Cluster, unavailable
from meshgate.testing.drills import SCALED, SOLO, drill_cluster


@dataclass
class Scenario:
    """One drill: its fault, the load it runs under, and what must be true before."""

    name: str
    fault: chaos.Fault | None
    load: chaos.Load = field(default_factory=chaos.Load)
    concurrency: int | None = None  # None: --concurrency
    down_first: int | None = None  # a node killed before the load starts
    watch: str | None = None  # a pool whose scaling is followed on every node
    marks: dict[str, float] = field(default_factory=dict)


def scenarios(duration: float, nodes: int) -> list[Scenario]:
    sixth = duration / 6
    out = [
        Scenario("steady", None),
        Scenario(
            "kill -9 of a node (back at half time)",
            chaos.kill_node(0, restart_after_s=duration / 2 - sixth),
        ),
        Scenario(
            f"partition of a node for {sixth:.0f} s", chaos.partition(min(1, nodes - 1), sixth)
        ),
        Scenario("Redis killed, back after 2 s", chaos.restart_redis(2.0)),
    ]
    if nodes >= 3:  # solo on n1 and n2, forwarded by the rest
        out.append(
            Scenario(
                "forwarded: kill -9 of n1, n2 still runs solo (n1 back at half time)",
                chaos.kill_node(0, restart_after_s=duration / 2 - sixth),
                SOLO,
            )
        )
        gone = Scenario(
            f"forwarded: n2, the only node running solo, down for {sixth:.0f} s",
            None,
            SOLO,
            down_first=0,
        )
        gone.fault = chaos.kill_node(1, restart_after_s=sixth, marks=gone.marks)
        out.append(gone)
    out.append(
        Scenario(
            f"scaling: 2 callers, 14 more for {2 * sixth:.0f} s",
            chaos.burst(2 * sixth, 14, SCALED),
            SCALED,
            concurrency=2,
            watch="scaled",
        )
    )
    return out


def sentinel_scenario() -> Scenario:
    failover = Scenario("Redis primary killed under Sentinel", None)
    failover.fault = chaos.kill_redis_primary(failover.marks)
    return failover


async def _run(c: Cluster, s: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    watch = asyncio.ensure_future(chaos.watch_pools(c, s.watch, stop)) if s.watch else None
    r = await chaos.run_scenario(
        c,
        s.name,
        s.fault,
        duration_s=args.duration,
        fault_at_s=args.duration / 6,
        concurrency=s.concurrency or args.concurrency,
        settle_s=60,
        load=s.load,
        marks=s.marks,
    )
    stop.set()
    row = r.as_dict()
    if watch is not None:
        row["pools"] = await watch
    return row


def run_scenarios(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []

    def chosen(s: Scenario) -> bool:
        return not args.only or any(w in s.name for w in args.only)

    with tempfile.TemporaryDirectory() as tmp, drill_cluster(Path(tmp), args.nodes) as c:
        for s in filter(chosen, scenarios(args.duration, args.nodes)):
            c.heal()
            if s.down_first is not None:
                c.kill(c.nodes[s.down_first])
                c.wait_backends({n.name for n in c.nodes} - {c.nodes[s.down_first].name})
            row = asyncio.run(_run(c, s, args))
            print(json.dumps(row), file=sys.stderr, flush=True)
            out.append(row)
    failover = sentinel_scenario()
    if chosen(failover):
        with (
            tempfile.TemporaryDirectory() as tmp,
            Cluster(Path(tmp), nodes=args.nodes, sentinel=True) as c,
        ):
            row = asyncio.run(_run(c, failover, args))
            print(json.dumps(row), file=sys.stderr, flush=True)
            out.append(row)
    return out


# HAProxy's connections (to nodes, to clients): one per request each, the drills' default;
# clients' kept alive; both kept alive.
MODES = ((True, True), (True, False), (False, False))


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each size in turn, `--rounds` times over (interleaved, so that a neighbour's load
    on the machine does not land on one size only)."""
    out = []
    body = json.dumps({"arguments": {"text": "hello"}})
    for _ in range(args.rounds):
        for n in args.sizes:
            for server_close, client_close in MODES if args.keepalive_too else MODES[:1]:
                with (
                    tempfile.TemporaryDirectory() as tmp,
                    Cluster(
                        Path(tmp), nodes=n, server_close=server_close, client_close=client_close
                    ) as c,
                ):
                    script = Path(tmp) / "echo.lua"
                    script.write_text(WRK_SCRIPT % body + WRK_DONE)
                    url = f"{c.url}/api/v1/mcp/servers/fault/tools/echo"
                    wrk_once(url, script, 4, 2)  # warm-up: connections, first calls
                    row = {"nodes": n, "server_close": server_close, "client_close": client_close}
                    row.update(wrk_once(url, script, 32, args.throughput_s))
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    out.append(row)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | calls/s | read ok | read failures | write failures | enqueue failures "
        "| tasks acked | lost | run twice | recovery s |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for r in results:
        recovery = "-" if r["recovery_s"] is None else r["recovery_s"]
        lines.append(
            f"| {r['name']} | {r['calls_per_s']:.0f} | {100 * r['echo_success']:.3f} % "
            f"| {_fmt(r['echo_errors'])} | {_fmt(r['write_errors'])} "
            f"| {_fmt(r['enqueue_errors'])} | {r['tasks_acked']} | {r['tasks_lost']} "
            f"| {r['tasks_duplicated']} | {recovery} |"
        )
        extra = {
            "problems": r["problems"],
            "tasks": r["tasks_final"],
            "slowest failure s": r["slowest_failure_s"],
            "marks s": r["marks_s"],
            "pools": r.get("pools"),
        }
        notes.append(f"- {r['name']}: " + json.dumps({k: v for k, v in extra.items() if v}))
    return "\n".join([*lines, "", *notes])


def _fmt(errors: dict[str, int]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in errors.items()) or "0"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--throughput-s", type=int, default=20)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3], help="nodes, in order")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--keepalive-too",
        action="store_true",
        help="also measure HAProxy keeping connections alive (to clients; to clients and nodes)",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-scenarios", action="store_true")
    p.add_argument("--only", nargs="+", help="only scenarios whose name has one of these words")
    p.add_argument("--json", type=Path, help="write every number to FILE too")
    args = p.parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"cannot build a cluster here: {reason}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {}
    if not args.skip_scenarios:
        report["scenarios"] = run_scenarios(args)
        print(table(report["scenarios"]))
    if not args.skip_throughput:
        if shutil.which("wrk") is None:
            print("wrk is not installed: no throughput", file=sys.stderr)
        else:
            report["throughput"] = throughput(args)
            head = "| nodes | clients to HAProxy | HAProxy to nodes | calls/s | p50 ms | p99 ms |"
            print(f"\n{head} errors |")
            print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
            for t in report["throughput"]:
                kinds = [
                    "a connection per request" if close else "kept alive"
                    for close in (t["client_close"], t["server_close"])
                ]
                print(
                    f"| {t['nodes']} | {kinds[0]} | {kinds[1]} | {t['calls_per_s']:.0f} "
                    f"| {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['errors']:.0f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
