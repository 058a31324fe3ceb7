"""What observability costs a call: tracing off, sampled (1 %, the default, and 10 %), and every
call traced.

    .venv/bin/python bench/bench_tracing.py [--duration 5] [--rounds 3] [--concurrency 16]
                                            [--baseline-rev REV]

Four gateways run side by side in the same run, each on its own fault server, identical but
for `tracing` / `trace_sample_ratio`; wrk drives REST calls of `echo` at each in turn, for
`--rounds` rounds (so drift of the machine hits all of them alike), and the best round of each
is reported with the median. Metrics are always on; a second table times, in process, what the
instrumentation adds to one call with tracing off (the label lookups and one histogram
observation) against the call itself. `--baseline-rev` adds a gateway run from another
revision of this repository (extracted with `git archive` into a temp dir), e.g. one from before the
instrumentation, to the same alternation.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

from bench_echo import SERVERS, WRK_SCRIPT, revision_src, run_wrk
from meshgate.observability.metrics import metrics, outcome_of
from meshgate.testing.gateway import GatewayProcess, start_gateway

REPO = Path(__file__).resolve().parent.parent
MODES = {
    "tracing off": {"MESHGATE_TRACING": "false"},
    "tracing on, 1 % sampled (default)": {"MESHGATE_TRACE_SAMPLE_RATIO": "0.01"},
    "tracing on, 10 % sampled": {"MESHGATE_TRACE_SAMPLE_RATIO": "0.1"},
    "tracing on, every call": {"MESHGATE_TRACE_SAMPLE_RATIO": "1"},
}


def start(workdir: Path, env: dict[str, str], src: str | None = None) -> GatewayProcess:
    cmd, _, _ = SERVERS["fault"]
    return start_gateway(
        workdir,
        {"s": {"command": cmd[0], "args": cmd[1:]}},
        '[mesh]\nlog_level = "warning"\n[servers.s]\nmax_in_flight = 64\n',
        env=env,
        args=["--log-level", "info"],
        src=src,
    )


def instrumentation_ns() -> float:
    """Nanoseconds the always-on part adds to a call: one cached histogram observation and
    the outcome label (tracing off is one `is None` test on top)."""
    n = 200_000
    seconds = timeit.timeit(lambda: metrics.call("s", "echo", outcome_of(None), 0.001), number=n)
    return seconds / n * 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--baseline-rev", help="also run this git revision's gateway")
    args = p.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing (Debian package wrk)", file=sys.stderr)
        return 2
    _, tool, tool_args = SERVERS["fault"]
    script = WRK_SCRIPT % json.dumps({"arguments": tool_args})
    modes: dict[str, tuple[dict[str, str], str | None]] = {
        mode: (env, None) for mode, env in MODES.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline_rev:
            baseline: dict[str, tuple[dict[str, str], str | None]] = {
                f"revision {args.baseline_rev} (baseline)": (
                    {},
                    revision_src(args.baseline_rev, Path(tmp)),
                )
            }
            modes = {**baseline, **modes}
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        gateways = {}
        try:
            for i, (mode, (env, src)) in enumerate(modes.items()):
                (Path(tmp) / str(i)).mkdir()
                gateways[mode] = start(Path(tmp) / str(i), env, src)
            for _ in range(args.rounds):
                for mode, gw in gateways.items():
                    url = f"{gw.url}/api/v1/mcp/servers/s/tools/{tool}"
                    run = run_wrk(url, script, args.duration, [args.concurrency])
                    results[mode].append(run[args.concurrency])
                    time.sleep(0.5)
        finally:
            for gw in gateways.values():
                gw.stop()
    print(
        f"REST echo through the gateway, concurrency {args.concurrency}, wrk {args.duration} s x "
        f"{args.rounds} rounds per mode, alternating; {platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    print()
    print("| mode | calls/s (best) | calls/s (median) | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, runs in results.items():
        best = max(runs, key=lambda r: r["calls_per_s"])
        median = statistics.median(r["calls_per_s"] for r in runs)
        print(
            f"| {mode} | {best['calls_per_s']:.0f} | {median:.0f} | {best['p50_ms']:.2f} | "
            f"{best['p99_ms']:.2f} |"
        )
    print()
    print(
        f"Instrumentation with tracing off, in process: {instrumentation_ns():.0f} ns per call "
        "(one histogram observation and its outcome label)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
