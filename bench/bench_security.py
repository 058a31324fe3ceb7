"""What authentication, policy and rate limits cost a tool call, in one run.

The same echo tool of meshgate's fault server through the REST tool call, driven by wrk at
each concurrency, on three gateways one after the other:

- `baseline`: a revision before authentication existed (`--baseline-rev`, git archive);
- `auth off`: this tree with no `[auth]` (the loopback default);
- `auth on`: this tree with `[auth]`, an API key per request (`Authorization: Bearer`), a
  role allowing the tool, a `[[limits]]` bucket every call takes from (too large to refuse),
  and an audit line per tool call.

    .venv/bin/python bench/bench_security.py [--baseline-rev REV] [--duration 10] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_echo import SERVERS, make_key, print_rows, revision_src, run_rest
from meshgate.testing.gateway import GatewayProcess, start_gateway

SERVER = "fault"
POLICY = '[mesh]\nlog_level = "warning"\n[servers.s]\nmax_in_flight = 64\n'
AUTH = """
[auth]

[roles.agent]
allow = ["mcp:s/echo"]

[[limits]]
name = "per-principal"
rate_per_s = 1000000
burst = 1000000
"""


def gateway(workdir: Path, policy: str, src: str | None = None) -> GatewayProcess:
    cmd, _, _ = SERVERS[SERVER]
    return start_gateway(
        workdir,
        {"s": {"command": cmd[0], "args": cmd[1:]}},
        policy,
        args=["--log-level", "info"],
        src=src,
    )


def run(
    url: str, duration: int, levels: list[int], key: str | None = None
) -> dict[int, dict[str, float]]:
    return run_rest(url, SERVER, duration, levels, key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-rev", default="e6de35e")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    rows: list[tuple[str, dict[int, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = revision_src(a.baseline_rev, root)
        for name, policy, source in (
            (f"baseline {a.baseline_rev}", POLICY, src),
            ("auth off", POLICY, None),
            (
                "auth on (API key, role, limit)",
                POLICY.replace("[mesh]\n", "[mesh]\naudit_tool_calls = false\n") + AUTH,
                None,
            ),
            ("auth on (API key, role, limit, audit)", POLICY + AUTH, None),
        ):
            workdir = root / name.split()[0] / name.split()[-1].strip("()")
            workdir.mkdir(parents=True)
            key = make_key(workdir / "data") if "auth on" in name else None
            gw = gateway(workdir, policy, source)
            try:
                rows.append((name, run(gw.url, a.duration, a.concurrency, key)))
            finally:
                gw.stop()
    base = rows[0][1]

    def ratio(name: str, c: int, r: dict[str, float]) -> str:
        return f"{r['calls_per_s'] / base[c]['calls_per_s']:.2f}x"

    print_rows(rows, "vs baseline", ratio, a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
