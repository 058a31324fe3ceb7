"""What an open dashboard costs the gateway: the overview's reads (`/services` and `/nodes`
every second, `/stats` every fifth), whole (200) and unchanged (304 with `If-None-Match`), and
the gateway's CPU while one page polls, as the registered services grow.

    .venv/bin/python bench/bench_dashboard.py [--sizes 10,100,300] [--reads 200]

A real gateway (one fault MCP server, N registered HTTP services with TTL checks, so no check
traffic), the reads from one HTTP client on loopback, one at a time as the page makes them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from meshgate.testing.gateway import start_gateway

FAULT = {"command": "python", "args": ["-m", "meshgate.testing.fault_server"]}
READS = ("/api/v1/mesh/v2/services?limit=1000", "/api/v1/mesh/v2/nodes", "/api/v1/mesh/v2/stats")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def pct(samples: list[float], p: int) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * p / 100))]


def measure(size: int, reads: int, tmp: Path) -> list[str]:
    work = tmp / f"n{size}"
    work.mkdir()
    gw = start_gateway(work, {"fault": FAULT})
    rows = []
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as http:
            for i in range(size):
                body = {
                    "name": f"svc-{i:04d}",
                    "url": f"http://127.0.0.1:{20000 + i}",
                    "check": {"type": "ttl", "interval_s": 3600},
                    "depends_on": [f"svc-{(i + 1) % size:04d}"],
                }
                http.post("/api/v1/mesh/v2/register", json=body).raise_for_status()
            for path in READS:
                whole: list[float] = []
                same: list[float] = []
                size_bytes = 0
                for _ in range(reads):
                    t = time.perf_counter()
                    r = http.get(path)
                    whole.append((time.perf_counter() - t) * 1000)
                    size_bytes = len(r.content)
                    t = time.perf_counter()
                    # (`/stats` changes as its buckets turn: a 200 then, as the page gets)
                    http.get(path, headers={"If-None-Match": r.headers["etag"]})
                    same.append((time.perf_counter() - t) * 1000)
                name = path.split("?")[0].rsplit("/", 1)[1]
                rows.append(
                    f"| {size} | `{name}` | {size_bytes} | {statistics.median(whole):.2f} "
                    f"| {pct(whole, 95):.2f} | {statistics.median(same):.2f} |"
                )
            # One page's polling, as app.js does it: `/services` and `/nodes` every second,
            # `/stats` every fifth, with the tags, for 20 s.
            tags: dict[str, str] = {}
            before = cpu_s(gw.proc.pid)
            start = time.monotonic()
            for second in range(20):
                for path in READS if second % 5 == 0 else READS[:2]:
                    r = http.get(path, headers={"If-None-Match": tags.get(path, "")})
                    if r.status_code == 200:
                        tags[path] = r.headers["etag"]
                time.sleep(max(0.0, start + second + 1 - time.monotonic()))
            busy = (cpu_s(gw.proc.pid) - before) / (time.monotonic() - start)
            rows.append(f"| {size} | one page polling | | | | {busy * 100:.1f} % CPU |")
    finally:
        gw.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,300")
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    print("| HTTP services | read | bytes | 200 p50 ms | 200 p95 ms | 304 p50 ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for row in measure(size, args.reads, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
