"""How long a call waits for a cold start from zero, and how fast a pool grows under a burst.

    .venv/bin/python bench/bench_autoscale.py [--rounds 5] [--servers fault,everything]
        [--burst 16] [--window 1.0]

Cold start: the gateway runs each server with `instances = {min = 0, max = 1}` and a short
cool-down, so an idle pool stops its process. Each round waits until the pool shows no
process, then times one tool call through the REST API (the call starts a process, waits for
its discovery or handshake and `tools/list`, then is sent), and then a second call on the warm
instance. "server alone" is the floor: the same server spawned without the gateway and asked
`initialize` and `tools/list` over its pipes (bench_restart.start_alone).

Burst: the fault server with `instances = {min = 1, max = 4}`, `max_in_flight = 4` (scale up
over 3 calls in flight per instance, the default 75 %), the default sampling interval (0.5 s)
and `--window` as `scale_up_after_s`; `--burst` concurrent `sleep` calls of 6 s. Reported: the
time from the burst to the first instance holding four calls, to the first decision (the
gateway's log line), to the pool showing four instances, and to all four healthy; and how
long the calls took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench_restart import servers, start_alone
from meshgate.testing.gateway import start_gateway


def view(client: httpx.Client, name: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/mcp/servers/{name}").json()
    return body


def wait(client: httpx.Client, name: str, check: Any, timeout: float = 60) -> float:
    """Poll the server's view until `check(view)`; the time it held first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check(view(client, name)):
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"{name}: timed out waiting")


def cold_starts(name: str, rounds: int) -> dict[str, Any]:
    entry, tool, args = servers()[name]
    policy = (
        f"[servers.{name}]\ninstances = {{min = 0, max = 1}}\n"
        f"[servers.{name}.autoscale]\ninterval_s = 0.05\nscale_down_after_s = 0.2\n"
    )
    cold: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp), {name: entry}, policy)
        try:
            with httpx.Client(base_url=gw.url, timeout=60) as client:
                url = f"/api/v1/mcp/servers/{name}/tools/{tool}"
                for _ in range(rounds):
                    wait(client, name, lambda v: not v["instances"])
                    for into in (cold, warm):
                        t = time.perf_counter()
                        r = client.post(url, json={"arguments": args})
                        into.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            raise RuntimeError(f"{name}: {r.status_code} {r.text}")
        finally:
            gw.stop()
    alone = start_alone(entry, rounds)
    return {"cold": cold, "warm": warm, "alone": alone}


def burst(n: int, window: float) -> dict[str, Any]:
    entry, _, _ = servers()["fault"]
    policy = (
        "[servers.fault]\ninstances = {min = 1, max = 4}\nmax_in_flight = 4\n"
        f"[servers.fault.autoscale]\nscale_up_after_s = {window}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp), {"fault": entry}, policy)
        try:
            with httpx.Client(base_url=gw.url, timeout=60) as client:
                url = "/api/v1/mcp/servers/fault/tools/sleep"

                limits = httpx.Limits(max_connections=n + 1)
                calls = httpx.Client(base_url=gw.url, timeout=60, limits=limits)

                def call(_: int) -> float:
                    t = time.perf_counter()
                    calls.post(url, json={"arguments": {"seconds": 6}}).raise_for_status()
                    return time.perf_counter() - t

                with ThreadPoolExecutor(n) as pool, calls:
                    started = time.monotonic()
                    wall = time.time()
                    durations = pool.map(call, range(n))
                    full = wait(client, "fault", lambda v: v["instances"][0]["in_flight"] == 4)
                    shown = wait(client, "fault", lambda v: len(v["instances"]) == 4)
                    healthy = wait(
                        client,
                        "fault",
                        lambda v: [i["state"] for i in v["instances"]] == ["healthy"] * 4,
                    )
                    took = list(durations)
                first = decided_at(gw.log, wall)
        finally:
            gw.stop()
    return {
        "full": full - started,
        "first_decision": first - wall if first is not None else None,
        "shown": shown - started,
        "healthy": healthy - started,
        "calls": took,
    }


def decided_at(log: list[str], after: float) -> float | None:
    """The wall-clock time of the first scaling line logged after `after`."""
    for line in list(log):
        if line.startswith("{"):
            entry = json.loads(line)
            if ": scaling " in entry["msg"]:
                stamp, millis = entry["ts"].rstrip("Z").split(".")
                at = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) - time.timezone
                at += int(millis) / 1000
                if at >= after - 1:
                    return at
    return None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--servers", default="fault,everything")
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args()
    known = servers()
    print("| server | cold call (median, min-max) | warm call | server alone |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.servers.split(","):
        if name not in known:
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        r = cold_starts(name, args.rounds)
        cold = r["cold"]
        print(
            f"| {name} | {ms(statistics.median(cold))} ({ms(min(cold))}-{ms(max(cold))}) | "
            f"{ms(statistics.median(r['warm']))} | {ms(r['alone'])} |"
        )
    b = burst(args.burst, args.window)
    first = b["first_decision"]
    print()
    print(f"burst of {args.burst} x sleep 6 s, scale_up_after_s = {args.window}:")
    print(f"  first instance full (4 in flight) after {ms(b['full'])}")
    print(f"  first decision after {ms(first) if first is not None else '?'}")
    print(f"  four instances shown after {ms(b['shown'])}, all healthy after {ms(b['healthy'])}")
    calls = b["calls"]
    print(
        f"  calls took {min(calls):.2f}-{max(calls):.2f} s "
        f"(one instance alone: {args.burst // 4 * 6} s for the last of them)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
