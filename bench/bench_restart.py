"""How fast a killed instance is replaced, and whether retry-safe calls notice.

    .venv/bin/python bench/bench_restart.py [--kills 5] [--instances 2]

For each server (meshgate's fault server, mcp-server-time, server-everything), the gateway runs
`--instances` instances; the script SIGKILLs one instance at a time while a client keeps
calling a read-only tool, and reports the time from the kill until a new process of that slot
is healthy, and the errors the client saw.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
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


def servers() -> dict[str, tuple[dict[str, Any], str, dict[str, Any]]]:
    out: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
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
    return out


def instances(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/api/v1/mcp/servers/{name}").json()["instances"]
    return items


def run(
    name: str, entry: dict[str, Any], tool: str, args: dict[str, Any], kills: int, n: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        policy = (
            f"[servers.{name}]\ninstances = {n}\n[servers.{name}.restart]\nmax_failures = 100\n"
        )
        gw = start_gateway(Path(tmp), {name: entry}, policy)
        url = gw.url
        client = httpx.Client(base_url=url, timeout=30)
        stop = threading.Event()
        outcome = {"ok": 0, "errors": 0}

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"/api/v1/mcp/servers/{name}/tools/{tool}", json={"arguments": args})
                    outcome["ok" if r.status_code == 200 else "errors"] += 1

        try:
            deadline = time.monotonic() + 60
            while not all(i["state"] == "healthy" for i in instances(client, name)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy")
                time.sleep(0.05)
            worker = threading.Thread(target=load)
            worker.start()
            times = []
            for k in range(kills):
                victim = instances(client, name)[k % n]
                t0 = time.monotonic()
                os.kill(victim["pid"], signal.SIGKILL)
                while True:
                    now = next(i for i in instances(client, name) if i["id"] == victim["id"])
                    if now["state"] == "healthy" and now["pid"] != victim["pid"]:
                        break
                    if time.monotonic() - t0 > 30:
                        raise RuntimeError(f"{victim['id']} was not replaced in 30 s")
                    time.sleep(0.005)
                times.append(time.monotonic() - t0)
                time.sleep(0.5)
            stop.set()
            worker.join(30)
        finally:
            stop.set()
            client.close()
            gw.stop()
    return {
        "median_s": statistics.median(times),
        "max_s": max(times),
        "calls_ok": outcome["ok"],
        "call_errors": outcome["errors"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--instances", type=int, default=2)
    a = p.parse_args()
    print(f"{a.kills} kills per server, {a.instances} instances, a client calling throughout")
    print()
    print("| server | replaced in (median) | worst | calls ok | call errors |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (entry, tool, args) in servers().items():
        r = run(name, entry, tool, args, a.kills, a.instances)
        print(
            f"| {name} | {r['median_s'] * 1000:.0f} ms | {r['max_s'] * 1000:.0f} ms | "
            f"{r['calls_ok']:.0f} | {r['call_errors']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
