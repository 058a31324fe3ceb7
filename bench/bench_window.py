"""What the rolling call window (`observability/window.py`) costs: ns per recorded call, against
the call histogram every call already pays (`metrics.call`) and an empty function of the same
arguments in the same run; and what one `/stats` answer costs as services grow.

Usage: python bench/bench_window.py [--calls 200000] [--rounds 5] [--services 1,10,100]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from meshgate.observability.metrics import metrics
from meshgate.observability.window import CallWindow

Calls = list[tuple[str, str, float]]


def calls(n: int, services: int, seed: int = 1) -> Calls:
    """n calls over `services` names: 5 % errors, log-normal latencies around 2.5 ms."""
    rng = random.Random(seed)
    names = [f"svc{i}" for i in range(services)]
    return [
        (rng.choice(names), "error" if rng.random() < 0.05 else "ok", rng.lognormvariate(-6, 1))
        for _ in range(n)
    ]


class Clock:
    """Epoch seconds set by the caller, to fill every bucket of a window at once."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def per_call_ns(record: Callable[[str, str, float], None], data: Calls, rounds: int) -> float:
    """The best round's ns per call of `record` over `data`."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for service, outcome, seconds in data:
            record(service, outcome, seconds)
        best = min(best, (time.perf_counter_ns() - started) / len(data))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--services", default="1,10,100")
    args = ap.parse_args()
    data = calls(args.calls, 10)
    window = CallWindow()

    def empty(service: str, outcome: str, seconds: float) -> None:
        pass

    def histogram(service: str, outcome: str, seconds: float) -> None:
        metrics.call(service, "tool", outcome, seconds)

    def both(service: str, outcome: str, seconds: float) -> None:
        # What the router's one recording point does per call.
        metrics.call(service, "tool", outcome, seconds)
        window.record(service, outcome, seconds)

    rows = [
        ("empty function (the loop and call alone)", empty),
        ("`CallWindow.record`", window.record),
        ("`metrics.call` (the call histogram)", histogram),
        ("both, as the router records a call", both),
    ]
    print(f"{args.calls} calls over 10 services, best of {args.rounds} rounds\n")
    print("| recording | ns/call |")
    print("| --- | ---: |")
    for name, record in rows:
        print(f"| {name} | {per_call_ns(record, data, args.rounds):.0f} |")
    print("\n| services | first read, ms | later reads, ms |")
    print("| ---: | ---: | ---: |")
    for n in (int(x) for x in args.services.split(",")):
        clock = Clock(1_000_000.0)
        filled = CallWindow(clock=clock)
        for i, (service, outcome, seconds) in enumerate(calls(30 * 1000, n)):
            clock.now = 1_000_000.0 + i / 100  # 100 calls/s for 300 s: every bucket has calls
            filled.record(service, outcome, seconds)
        started = time.perf_counter()
        filled.summary(300)
        first = time.perf_counter() - started
        best = float("inf")
        for _ in range(args.rounds):  # closed buckets' p95 are kept from the first read
            started = time.perf_counter()
            filled.summary(300)
            best = min(best, time.perf_counter() - started)
        print(f"| {n} | {first * 1e3:.2f} | {best * 1e3:.2f} |")


if __name__ == "__main__":
    main()
