"""What matching a request against the edge route table costs, against a linear scan of the
same routes in Kong's order (what a table not compiled into lookups would do per request).

Usage: python bench/bench_edge_match.py [--routes 10,100,1000] [--requests 20000]
"""

from __future__ import annotations

import argparse
import random
import time

from meshgate.api.edge import RouteTable
from meshgate.config.routes import RouteSettings


def routes(n: int) -> list[RouteSettings]:
    """n routes as a site's Kong file has them: a few hosts, some wildcards, some methods."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        kw: dict[str, object] = {"paths": [f"/svc{i}/v{i % 3}"]}
        if i % 4 == 0:
            kw["hosts"] = [f"api{i % 10}.example.com"]
        elif i % 4 == 1:
            kw["hosts"] = [f"*.t{i % 7}.example.com"]
        if rng.random() < 0.3:
            kw["methods"] = ["GET", "POST"]
        out.append(RouteSettings(service=f"s{i}", **kw))
    return out


def linear(table: list[RouteSettings], host: str, method: str, path: str) -> RouteSettings | None:
    """The same choice by scanning every route, best ranked first."""
    name = host.split(":")[0]

    def rank(r: RouteSettings) -> tuple[int, int]:
        wild = any(h.startswith("*.") for h in r.hosts)
        return (bool(r.hosts) + bool(r.methods), 0 if wild else 1)

    best: tuple[tuple[int, int], int, RouteSettings] | None = None
    for r in table:
        if r.methods and method not in r.methods:
            continue
        if r.hosts and not any(
            h == name or (h.startswith("*.") and name.endswith(h[1:])) for h in r.hosts
        ):
            continue
        for p in r.paths or ("",):
            if path.startswith(p):
                key = (rank(r), len(p), r)
                if best is None or (key[0], key[1]) > (best[0], best[1]):
                    best = key
    return best[2] if best else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", default="10,100,1000")
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    print("| routes | compiled µs/request | linear scan µs/request |")
    print("| ---: | ---: | ---: |")
    for n in (int(x) for x in args.routes.split(",")):
        rs = routes(n)
        table = RouteTable(rs)
        rng = random.Random(1)
        reqs = []
        for _ in range(args.requests):
            i = rng.randrange(n)
            host = rng.choice([f"api{i % 10}.example.com", f"a.t{i % 7}.example.com", "gw"])
            reqs.append((host, rng.choice(["GET", "PUT"]), f"/svc{i}/v{i % 3}/items/{i}"))
        for host, method, path in reqs[:200]:  # the same answers, or the comparison is moot
            found = table.match(host, method, path)
            assert (found.route if found else None) == linear(rs, host, method, path)
        t = time.perf_counter()
        for host, method, path in reqs:
            table.match(host, method, path)
        compiled = (time.perf_counter() - t) / len(reqs) * 1e6
        t = time.perf_counter()
        for host, method, path in reqs:
            linear(rs, host, method, path)
        scanned = (time.perf_counter() - t) / len(reqs) * 1e6
        print(f"| {n} | {compiled:.2f} | {scanned:.2f} |")


if __name__ == "__main__":
    main()
