"""How fast a killed instance is replaced, and whether retry-safe calls notice.

    .venv/bin/python bench/bench_restart.py [--kills 6] [--instances 2] [--stable-after 0.5]
        [--servers fault,time,everything,everything-npx] [--baseline-rev REV]

For each server (meshgate's fault server, mcp-server-time, server-everything, and
server-everything through `npx`, whose `node` is a grandchild), the gateway runs `--instances`
instances; the script SIGKILLs one instance at a time while a client keeps calling a read-only
tool, and reports the median time from the kill until the slot shows a new process (the
gateway's share: seeing the exit, ending the group, deciding the restart, spawning; polled
through the API, so it includes up to one poll's latency) and until that process is routable
(adding the server's own start-up: discovery or handshake, `tools/list`; read from the log
line that marks it healthy, to the millisecond). "server alone" is the floor: the same server
started without the gateway and asked `initialize` and `tools/list` over its pipes.

Each kill is a first failure: kills of one slot are further apart than `--stable-after`
(the `restart.stable_after_s` the gateway is given), so none waits for a crash-loop backoff.
`--baseline-rev` runs the same kills against that git revision's `src` as well (taken with
`git archive`), gateway by gateway, for a before/after in one run.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from meshgate.testing.gateway import start_gateway

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

Server = tuple[dict[str, Any], str, dict[str, Any]]

# The line a gateway logs when a slot's new process is healthy, before and after the shared
# health state machine: "f-1 healthy: pid 42, ..." and "f-1: starting -> healthy (verified: ...".
HEALTHY_LINE = re.compile(r"^(?P<id>\S+?):? (?:starting -> )?healthy:? \(?(?:verified: )?pid ")


def healthy_at(log: list[str], instance_id: str, after: float) -> float | None:
    """The wall-clock time the gateway logged `instance_id` healthy, first after `after`."""
    for line in list(log):
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        m = HEALTHY_LINE.match(entry["msg"])
        if m is None or m.group("id") != instance_id:
            continue
        stamp, millis = entry["ts"].rstrip("Z").split(".")
        at = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000
        if at >= after:
            return at
    return None


def servers() -> dict[str, Server]:
    out: dict[str, Server] = {
        "fault": (
            {"command": sys.executable, "args": ["-m", "meshgate.testing.fault_server"]},
            "echo",
            {"text": "hi"},
        ),
    }
    time_server = shutil.which("mcp-server-time", path=str(BIN))
    if time_server:
        out["time"] = ({"command": time_server}, "get_current_time", {"timezone": "UTC"})
    everything = REPO / "node_modules/.bin/mcp-server-everything"
    if everything.exists():
        out["everything"] = ({"command": str(everything)}, "echo", {"message": "hi"})
        if shutil.which("npx"):
            npx = {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-everything"],
                "cwd": str(REPO),
            }
            out["everything-npx"] = (npx, "echo", {"message": "hi"})
    return out


def instances(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/api/v1/mcp/servers/{name}").json()["instances"]
    return items


def run(
    name: str, server: Server, *, kills: int, n: int, stable_after: float, src: str | None
) -> dict[str, Any]:
    entry, tool, args = server
    policy = (
        f"[servers.{name}]\ninstances = {n}\n"
        f"[servers.{name}.restart]\nmax_failures = 100\nstable_after_s = {stable_after}\n"
    )
    spawned: list[float] = []
    healthy: list[float] = []
    kills_at: list[tuple[str, float]] = []
    outcome = {"ok": 0, "errors": 0}
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp), {name: entry}, policy, src=src)
        client = httpx.Client(base_url=gw.url, timeout=30)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"/api/v1/mcp/servers/{name}/tools/{tool}", json={"arguments": args})
                    outcome["ok" if r.status_code == 200 else "errors"] += 1

        worker = threading.Thread(target=load)
        try:
            deadline = time.monotonic() + 60
            while not all(i["state"] == "healthy" for i in instances(client, name)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy")
                time.sleep(0.05)
            worker.start()
            for k in range(kills):
                time.sleep(max(0.5, stable_after * 1.2))  # every kill a first failure
                victim = instances(client, name)[k % n]
                t0 = time.monotonic()
                kills_at.append((victim["id"], time.time()))
                os.kill(victim["pid"], signal.SIGKILL)
                seen_spawn: float | None = None
                while True:
                    now = next(i for i in instances(client, name) if i["id"] == victim["id"])
                    t = time.monotonic() - t0
                    if now["pid"] not in (None, victim["pid"]) and seen_spawn is None:
                        seen_spawn = t
                    if now["state"] == "healthy" and now["pid"] != victim["pid"]:
                        break
                    if t > 30:
                        raise RuntimeError(f"{victim['id']} was not replaced in 30 s")
                    time.sleep(0.005)
                spawned.append(seen_spawn if seen_spawn is not None else t)
            for instance_id, killed in kills_at:
                deadline = time.monotonic() + 5  # the log is read by a thread: it may lag
                while (at := healthy_at(gw.log, instance_id, killed)) is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no log line marks {instance_id} healthy after a kill")
                    time.sleep(0.05)
                healthy.append(at - killed)
        finally:
            stop.set()
            if worker.is_alive():
                worker.join(30)
            client.close()
            gw.stop()
    return {
        "spawned_s": statistics.median(spawned),
        "median_s": statistics.median(healthy),
        "max_s": max(healthy),
        "calls_ok": outcome["ok"],
        "call_errors": outcome["errors"],
    }


def start_alone(entry: dict[str, Any], runs: int) -> float:
    """Median seconds from spawning the server to its answer to `tools/list`, no gateway."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    then = [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [entry["command"], *entry.get("args", [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=entry.get("cwd"),
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(init) + "\n").encode())
            proc.stdin.flush()
            proc.stdout.readline()
            proc.stdin.write("".join(json.dumps(m) + "\n" for m in then).encode())
            proc.stdin.flush()
            proc.stdout.readline()
            times.append(time.monotonic() - t0)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return statistics.median(times)


def baseline_src(rev: str, into: Path) -> str:
    """`src` of a git revision, exported (no worktree, no checkout)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--stable-after", type=float, default=0.5)
    p.add_argument("--servers", help="comma-separated names (default: all available)")
    p.add_argument("--baseline-rev", help="also run this git revision's gateway")
    a = p.parse_args()
    available = servers()
    names = a.servers.split(",") if a.servers else list(available)
    print(
        f"{a.kills} kills per server, {a.instances} instances, a client calling throughout; "
        f"restart.stable_after_s = {a.stable_after}"
    )
    print()
    print("| server | gateway | new process | routable | worst | calls ok | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, str | None] = {"this tree": None}
        if a.baseline_rev:
            trees = {a.baseline_rev: baseline_src(a.baseline_rev, Path(tmp)), **trees}
        for name in names:
            for label, src in trees.items():
                r = run(
                    name,
                    available[name],
                    kills=a.kills,
                    n=a.instances,
                    stable_after=a.stable_after,
                    src=src,
                )
                print(
                    f"| {name} | {label} | {r['spawned_s'] * 1000:.0f} ms | "
                    f"{r['median_s'] * 1000:.0f} ms | {r['max_s'] * 1000:.0f} ms | "
                    f"{r['calls_ok']} | {r['call_errors']} |",
                    flush=True,
                )
            alone = start_alone(available[name][0], a.kills)
            print(f"| {name} | server alone | | {alone * 1000:.0f} ms | | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
