"""A cluster of gateways behind HAProxy under faults, and its throughput with 1, 2 and 3 nodes.

    sudo .venv/bin/python bench/bench_cluster.py [--duration 60] [--nodes 3]
        [--throughput-s 20] [--sizes 1 2 3] [--rounds 2] [--keepalive-too]
        [--concurrency 16] [--skip-throughput] [--skip-scenarios] [--json FILE]

Scenarios (meshgate.testing.chaos, on `--nodes` gateways in network namespaces, one shared
Redis, HAProxy in front): steady load; kill -9 of a node a sixth into the run, started again
at half; a partition of a node for a sixth of the run; Redis killed and back after 2 s. Each
drives `--concurrency` closed-loop callers (70 % `echo`, 15 % `write`, 15 % task enqueues of
`write`) and prints, per scenario: the success rate of the retry-safe calls, the failures of
the others by status, tasks acknowledged / lost / run twice, and the time from the fault to
the last failed call.

Throughput: `wrk` POSTing `echo` through HAProxy for `--throughput-s` at 32 connections, on a
fresh cluster of each size, the sizes interleaved `--rounds` times; `--keepalive-too` also
measures HAProxy keeping its connections to the nodes (faster, but see docs/operations.md).
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
from pathlib import Path
from typing import Any

from bench_echo import WRK_DONE, WRK_SCRIPT, wrk_once
from meshgate.testing import chaos
from meshgate.testing.cluster import Cluster, unavailable


def scenarios(duration: float, nodes: int) -> list[tuple[str, chaos.Fault | None]]:
    sixth = duration / 6
    return [
        ("steady", None),
        (
            "kill -9 of a node (back at half time)",
            chaos.kill_node(0, restart_after_s=duration / 2 - sixth),
        ),
        (f"partition of a node for {sixth:.0f} s", chaos.partition(min(1, nodes - 1), sixth)),
        ("Redis killed, back after 2 s", chaos.restart_redis(2.0)),
    ]


def run_scenarios(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), nodes=args.nodes) as c:
        for name, fault in scenarios(args.duration, args.nodes):
            c.heal()
            r = asyncio.run(
                chaos.run_scenario(
                    c,
                    name,
                    fault,
                    duration_s=args.duration,
                    fault_at_s=args.duration / 6,
                    concurrency=args.concurrency,
                    settle_s=60,
                )
            )
            print(json.dumps(r.as_dict()), file=sys.stderr, flush=True)
            out.append(r.as_dict())
    return out


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each size in turn, `--rounds` times over (interleaved, so that a neighbour's load
    on the machine does not land on one size only)."""
    out = []
    body = json.dumps({"arguments": {"text": "hello"}})
    for _ in range(args.rounds):
        for n in args.sizes:
            for close in (True, False) if args.keepalive_too else (True,):
                with (
                    tempfile.TemporaryDirectory() as tmp,
                    Cluster(Path(tmp), nodes=n, server_close=close) as c,
                ):
                    script = Path(tmp) / "echo.lua"
                    script.write_text(WRK_SCRIPT % body + WRK_DONE)
                    url = f"{c.url}/api/v1/mcp/servers/fault/tools/echo"
                    wrk_once(url, script, 4, 2)  # warm-up: connections, first calls
                    row = {"nodes": n, "server_close": close}
                    row.update(wrk_once(url, script, 32, args.throughput_s))
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    out.append(row)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | calls/s | echo ok | echo failures | write failures | enqueue failures "
        "| tasks acked | lost | run twice | recovery s |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        recovery = "-" if r["recovery_s"] is None else r["recovery_s"]
        lines.append(
            f"| {r['name']} | {r['calls_per_s']:.0f} | {100 * r['echo_success']:.3f} % "
            f"| {_fmt(r['echo_errors'])} | {_fmt(r['write_errors'])} "
            f"| {_fmt(r['enqueue_errors'])} | {r['tasks_acked']} | {r['tasks_lost']} "
            f"| {r['tasks_duplicated']} | {recovery} |"
        )
    return "\n".join(lines)


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
        help="also measure HAProxy keeping its connections to nodes alive",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-scenarios", action="store_true")
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
            print("\n| nodes | HAProxy to nodes | calls/s | p50 ms | p99 ms | errors |")
            print("| ---: | --- | ---: | ---: | ---: | ---: |")
            for t in report["throughput"]:
                kind = "a connection per request" if t["server_close"] else "kept alive"
                print(
                    f"| {t['nodes']} | {kind} | {t['calls_per_s']:.0f} | {t['p50_ms']:.2f} "
                    f"| {t['p99_ms']:.2f} | {t['errors']:.0f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
