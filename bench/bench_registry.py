"""Registration and discovery latency of the mesh API, against the store's own cost.

    .venv/bin/python bench/bench_registry.py [--n 1000]

Same run: (1) the baseline, `RegistrationStore.put` and `.get` of one row straight on SQLite
(WAL, in a temp dir) in this process; (2) through a gateway: `POST /register` (each a new
instance, committed before the answer) and `GET /services/{name}` (discovery), one keep-alive
client, sequential. Prints p50/p95/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from meshgate.registry.store import RegistrationStore
from meshgate.testing.gateway import start_gateway


def _discard(value: object) -> None:
    pass


def timed(n: int, fn: Callable[[int], None]) -> dict[str, float]:
    for i in range(min(50, n)):  # warm-up
        fn(-i - 1)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(samples, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RegistrationStore(Path(tmp) / "baseline.sqlite3")
        body = {"name": "svc", "url": "http://127.0.0.1:9"}
        rows["store put (SQLite, in process)"] = timed(
            args.n, lambda i: store.put(f"svc-{i}", "svc", body)
        )
        rows["store get one (in process)"] = timed(
            args.n, lambda i: _discard(store.get(f"svc-{abs(i)}"))
        )
        store.close()

        work = Path(tmp) / "gw"
        work.mkdir()
        gw = start_gateway(
            work, {}, '[mesh]\nlog_level = "warning"\n', args=["--log-level", "info"]
        )
        try:
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                api = "/api/v1/mesh/v2"

                def register(i: int) -> None:
                    reg = {
                        "name": f"svc{i % 50}",
                        "url": f"http://127.0.0.1:9/{i}",
                        "check": {"type": "tcp", "interval_s": 3600},
                    }
                    r = c.post(f"{api}/register", json=reg)
                    assert r.status_code in (200, 201), r.text

                def discover(i: int) -> None:
                    r = c.get(f"{api}/services/svc{i % 50}")
                    assert r.status_code == 200, r.text

                rows["POST /register (gateway)"] = timed(args.n, register)
                rows["GET /services/{name} (gateway)"] = timed(args.n, discover)
        finally:
            gw.stop()

    print(f"n={args.n}; {platform.machine()}, Python {platform.python_version()}")
    print()
    print("| operation | p50 ms | p95 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
